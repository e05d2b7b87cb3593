//! Packing constant matrix operands once, when the plan is made, instead of
//! on every run.
//!
//! tract's optimiser turns a matrix product into a pack of each operand
//! (`OptMatMulPack`, the layout its kernels read) and the product itself.
//! A constant operand's pack is folded into a packed constant, unless that
//! constant also feeds another node and is larger than tract's folding
//! budget (4 MiB): folding would then keep two copies. Tied embeddings are
//! that case: a decoder's output projection reads the token embedding table
//! that its first `Gather` reads too. SmolLM2-135M's table (49,152 × 576
//! f32, 113 MB) was packed again at every token, 75 of the 118 ms a token
//! took. The packed copy costs its size in memory once per plan; every run
//! saves the time.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::matmul::pack::OptMatMulPack;

/// Replaces every pack of a constant in `model` (optimised) by the packed
/// constant; returns how many it replaced.
pub(super) fn pack_constant_operands(model: &mut TypedModel) -> TractResult<usize> {
    super::apply_all(model, next_fold)
}

fn next_fold(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for node in model.nodes() {
        if !node.op_is::<OptMatMulPack>() || node.inputs.len() != 1 {
            continue;
        }
        let Some(operand) = model.outlet_fact(node.inputs[0])?.konst.clone() else {
            continue;
        };
        // A pack that cannot be made now is left to run time, as tract
        // would have it.
        let Ok(Some(mut packed)) = node.op.eval_out_of_plan(tvec!(operand.into_tvalue())) else {
            continue;
        };
        if packed.len() != 1 {
            continue;
        }
        let fact = model.outlet_fact(node.id.into())?.exotic_fact.clone();
        let Ok(konst) = Const::new_with_opt_exotic_fact(packed.remove(0).into_arc_tensor(), fact)
        else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let wire = patch.wire_node(&node.name, konst, &[])?[0];
        patch.shunt_outside(model, node.id.into(), wire)?;
        return Ok(Some(patch));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::array::Gather;
    use tract_onnx::tract_core::ops::einsum::EinSum;

    const ROWS: usize = 2048;
    const WIDTH: usize = 576;

    /// A tied table as decoders have it: `Gather(table, ids)` and
    /// `x · tableᵀ`, the table (4.7 MB) over tract's folding budget.
    fn tied_table() -> TypedModel {
        let mut model = TypedModel::default();
        let values: Vec<f32> = (0..ROWS * WIDTH)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let table = model
            .add_const(
                "table",
                Tensor::from_shape(&[ROWS, WIDTH], &values).unwrap(),
            )
            .unwrap();
        let ids = model.add_source("ids", i64::fact([1])).unwrap();
        let x = model.add_source("x", f32::fact([1, WIDTH])).unwrap();
        let rows = model
            .wire_node(
                "lookup",
                Gather {
                    axis: 0,
                    output_type: None,
                },
                &[table, ids],
            )
            .unwrap();
        let logits = model
            .wire_node(
                "logits",
                EinSum::new("mk,nk->mn".parse().unwrap(), f32::datum_type()),
                &[x, table],
            )
            .unwrap();
        model.select_output_outlets(&[rows[0], logits[0]]).unwrap();
        model
    }

    fn runtime_packs_of_constants(model: &TypedModel) -> usize {
        model
            .nodes()
            .iter()
            .filter(|n| {
                n.op_is::<OptMatMulPack>()
                    && model.outlet_fact(n.inputs[0]).unwrap().konst.is_some()
            })
            .count()
    }

    fn run(model: TypedModel) -> TVec<TValue> {
        let x: Vec<f32> = (0..WIDTH).map(|i| (i % 13) as f32 / 13.0).collect();
        model
            .into_runnable()
            .unwrap()
            .run(tvec!(
                tensor1(&[5i64]).into_tvalue(),
                Tensor::from_shape(&[1, WIDTH], &x).unwrap().into_tvalue()
            ))
            .unwrap()
    }

    #[test]
    fn a_shared_constant_is_packed_once_with_the_same_results() {
        let before = tied_table().into_optimized().unwrap();
        // What the pass is for: tract leaves this pack to every run.
        assert_eq!(runtime_packs_of_constants(&before), 1);
        let mut after = before.clone();
        assert_eq!(pack_constant_operands(&mut after).unwrap(), 1);
        assert_eq!(runtime_packs_of_constants(&after), 0);
        // Packing is a copy in another layout: the same bits come out.
        let (a, b) = (run(before), run(after));
        assert_eq!(a.len(), 2);
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.shape(), b.shape());
            assert_eq!(
                a.to_plain_array_view::<f32>().unwrap(),
                b.to_plain_array_view::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn the_backends_plans_pack_shared_constants_once() {
        // The path every plan of the backend takes (general and specialised).
        let plan = super::super::optimise(tied_table()).unwrap();
        assert_eq!(runtime_packs_of_constants(&plan), 0);
    }
}
