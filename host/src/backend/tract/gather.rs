//! A graph rewrite for quantized embedding tables: look rows up first,
//! dequantize only those rows.
//!
//! Exporters store an int8 embedding table as `Gather(Mul(Cast(table_q),
//! scale), ids)`. tract keeps that order (folding the chain into an f32
//! constant would quadruple the table's memory), so every request casts and
//! scales the whole table (30522 × 384 for BERT vocabularies, ~16 ms and a
//! 47 MB temporary on a small ARM-class core) to use a few hundred rows.
//! Elementwise operations commute with a row lookup, so the lookup moves in
//! front: `Mul(Cast(Gather(table_q, ids)), Gather(scale, ids))`.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::Gather;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;

/// Tables with fewer rows are cheap to dequantize whole; leave them.
const MIN_ROWS: usize = 1024;

/// One step of the chain between the table and the lookup.
enum Step {
    /// A one-input elementwise node (a cast, a unary function).
    Unary(usize),
    /// A broadcasting binary node whose other input (at `slot`) is constant.
    Binary { node: usize, slot: usize },
}

/// Rewrites every lookup in `model` (decluttered) that reads a large constant
/// table through elementwise steps; returns how many it rewrote.
pub(super) fn gather_before_dequantize(model: &mut TypedModel) -> TractResult<usize> {
    super::apply_all(model, next_rewrite)
}

fn next_rewrite(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for node in model.nodes() {
        let Some(gather) = node.op_as::<Gather>() else {
            continue;
        };
        // A lookup that also converts (`output_type`) would convert the
        // per-row operands too; leave it.
        if gather.axis != 0 || gather.output_type.is_some() || node.inputs.len() != 2 {
            continue;
        }
        if let Some(patch) = rewrite(model, node, gather)? {
            return Ok(Some(patch));
        }
    }
    Ok(None)
}

fn rewrite(
    model: &TypedModel,
    lookup: &TypedNode,
    gather: &Gather,
) -> TractResult<Option<TypedModelPatch>> {
    // Walk from the lookup's data back to a constant, through nodes used
    // only by this chain.
    let mut steps = Vec::new();
    let mut outlet = lookup.inputs[0];
    let table = loop {
        let producer = model.node(outlet.node);
        if producer.op_is::<Const>() {
            break model.outlet_fact(outlet)?.konst.clone();
        }
        if producer.outputs[outlet.slot].successors.len() != 1
            || model.output_outlets()?.contains(&outlet)
        {
            return Ok(None);
        }
        if (producer.op_is::<Cast>() || producer.op_is::<ElementWiseOp>())
            && producer.inputs.len() == 1
        {
            steps.push(Step::Unary(producer.id));
            outlet = producer.inputs[0];
        } else if producer.op_is::<TypedBinOp>() && producer.inputs.len() == 2 {
            let facts = model.node_input_facts(producer.id)?;
            // The chain continues through the non-constant side, or the
            // larger one when both are constant.
            let chain = match (facts[0].konst.as_ref(), facts[1].konst.as_ref()) {
                (None, Some(_)) => 0,
                (Some(_), None) => 1,
                (Some(a), Some(b)) if a.len() >= b.len() => 0,
                (Some(_), Some(_)) => 1,
                (None, None) => return Ok(None),
            };
            steps.push(Step::Binary {
                node: producer.id,
                slot: 1 - chain,
            });
            outlet = producer.inputs[chain];
        } else {
            return Ok(None);
        }
    };
    let Some(table) = table else {
        return Ok(None);
    };
    if steps.is_empty() || table.rank() == 0 || table.shape()[0] < MIN_ROWS {
        return Ok(None);
    }
    let rows = table.shape()[0];
    let rank = table.rank();
    let indices_rank = model.outlet_fact(lookup.inputs[1])?.rank();

    let mut patch = TypedModelPatch::default();
    let indices = patch.tap_model(model, lookup.inputs[1])?;
    let source = patch.tap_model(model, outlet)?;
    let mut wire = patch.wire_node(
        format!("{}.rows", lookup.name),
        gather.clone(),
        &[source, indices],
    )?[0];
    for step in steps.iter().rev() {
        wire = match *step {
            Step::Unary(id) => {
                let node = model.node(id);
                patch.wire_node(format!("{}.rows", node.name), node.op.clone(), &[wire])?[0]
            }
            Step::Binary { node: id, slot } => {
                let node = model.node(id);
                let Some(operand) = model.outlet_fact(node.inputs[slot])?.konst.clone() else {
                    return Ok(None);
                };
                if operand.rank() != rank {
                    return Ok(None);
                }
                let operand = if operand.shape()[0] == rows {
                    // Per-row values (a scale, a zero point): look them up too.
                    let konst = patch.add_const(format!("{}.operand", node.name), operand)?;
                    patch.wire_node(
                        format!("{}.operand.rows", node.name),
                        gather.clone(),
                        &[konst, indices],
                    )?[0]
                } else if operand.shape()[0] == 1 {
                    // The same for every row: one axis per index axis instead.
                    let mut shape = vec![1; indices_rank];
                    shape.extend_from_slice(&operand.shape()[1..]);
                    let reshaped = operand.into_tensor().into_shape(&shape)?;
                    patch.add_const(format!("{}.operand", node.name), reshaped)?
                } else {
                    return Ok(None);
                };
                let inputs = if slot == 0 {
                    [operand, wire]
                } else {
                    [wire, operand]
                };
                patch.wire_node(format!("{}.rows", node.name), node.op.clone(), &inputs)?[0]
            }
        };
    }
    patch.shunt_outside(model, lookup.id.into(), wire)?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math::mul;

    /// `Gather(Mul(Cast(q), scale), ids)` over a `rows` × 4 int8 table.
    fn dequantize_then_gather(rows: usize) -> TypedModel {
        let mut model = TypedModel::default();
        let q: Vec<i8> = (0..rows * 4).map(|i| (i % 251) as i8).collect();
        let scale: Vec<f32> = (0..rows).map(|i| 0.5 + i as f32 / 1000.0).collect();
        let table = model
            .add_const("q", Tensor::from_shape(&[rows, 4], &q).unwrap())
            .unwrap();
        let scale = model
            .add_const("scale", Tensor::from_shape(&[rows, 1], &scale).unwrap())
            .unwrap();
        let ids = model.add_source("ids", i64::fact([3])).unwrap();
        let cast = model
            .wire_node(
                "cast",
                Cast {
                    to: f32::datum_type(),
                },
                &[table],
            )
            .unwrap();
        let scaled = model.wire_node("mul", mul(), &[cast[0], scale]).unwrap();
        let out = model
            .wire_node(
                "lookup",
                Gather {
                    axis: 0,
                    output_type: None,
                },
                &[scaled[0], ids],
            )
            .unwrap();
        model.select_output_outlets(&out).unwrap();
        model
    }

    fn run(model: TypedModel) -> Tensor {
        let ids = tensor1(&[7i64, 0, 2047]);
        let out = model
            .into_runnable()
            .unwrap()
            .run(tvec!(ids.into_tvalue()))
            .unwrap();
        out[0].clone().into_tensor()
    }

    #[test]
    fn lookups_move_in_front_of_dequantization_with_the_same_result() {
        let before = dequantize_then_gather(2048);
        let mut after = before.clone();
        assert_eq!(gather_before_dequantize(&mut after).unwrap(), 1);
        // Nothing the size of the whole table is computed any more.
        for node in after.nodes() {
            if !node.op_is::<Const>() {
                let volume = node.outputs[0].fact.shape.volume().to_i64().unwrap();
                assert!(volume <= 3 * 4, "{node} still makes {volume} values");
            }
        }
        assert_eq!(run(before), run(after));
    }

    #[test]
    fn small_tables_and_shared_chains_are_left_alone() {
        let mut small = dequantize_then_gather(16);
        assert_eq!(gather_before_dequantize(&mut small).unwrap(), 0);

        // The scaled table also feeds a second output: moving the lookup
        // would not save the whole-table work.
        let mut shared = dequantize_then_gather(2048);
        let mul = shared.node_by_name("mul").unwrap().id;
        let outputs = [shared.output_outlets().unwrap()[0], OutletId::new(mul, 0)];
        shared.select_output_outlets(&outputs).unwrap();
        assert_eq!(gather_before_dequantize(&mut shared).unwrap(), 0);
    }
}
