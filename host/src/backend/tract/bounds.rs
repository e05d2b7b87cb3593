//! Index inputs checked against the tables they look rows up in.
//!
//! A token id past a model's vocabulary is an easy mistake for a stage to
//! make, and tract's `Gather` does not check its indices: it indexes out of
//! its slice and panics. Where a model input feeds a lookup directly (through
//! casts and reshapes only), the host knows the table's length from the
//! model and checks every index before the model runs, naming the input,
//! the position and the value.

use crate::bindings::ElementType;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::Gather;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::source::TypedSource;
use wasmtime_wasi_nn::wit::Tensor as NnTensor;

/// A model input whose values index `rows` rows of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct IndexBound {
    /// The input's position among the model's inputs.
    pub input: usize,
    /// The length of the looked-up axis.
    pub rows: u64,
    /// The lookup node, for messages.
    pub node: String,
}

/// The inputs of `model` (decluttered) that index a table of known length.
pub(super) fn index_bounds(model: &TypedModel) -> TractResult<Vec<IndexBound>> {
    let inputs = model.input_outlets()?;
    let mut bounds: Vec<IndexBound> = Vec::new();
    for node in model.nodes() {
        let Some(gather) = node.op_as::<Gather>() else {
            continue;
        };
        let [data, indices] = node.inputs[..] else {
            continue;
        };
        let Ok(rows) = model.outlet_fact(data)?.shape[gather.axis].to_i64() else {
            continue;
        };
        let Some(source) = source_of(model, indices) else {
            continue;
        };
        let Some(input) = inputs.iter().position(|&o| o == source) else {
            continue;
        };
        let rows = u64::try_from(rows).unwrap_or(0);
        match bounds.iter_mut().find(|b| b.input == input) {
            // An input that indexes several tables must fit the smallest.
            Some(b) if b.rows > rows => {
                b.rows = rows;
                b.node = node.name.clone();
            }
            Some(_) => {}
            None => bounds.push(IndexBound {
                input,
                rows,
                node: node.name.clone(),
            }),
        }
    }
    Ok(bounds)
}

/// The model input `outlet` carries unchanged in value, through casts and
/// reshapes.
fn source_of(model: &TypedModel, mut outlet: OutletId) -> Option<OutletId> {
    loop {
        let node = model.node(outlet.node);
        if node.op_is::<TypedSource>() {
            return Some(outlet);
        }
        let passes_values = node.op_is::<Cast>() || node.op_is::<AxisOp>();
        if !passes_values || node.inputs.len() != 1 {
            return None;
        }
        outlet = node.inputs[0];
    }
}

/// Checks that every value of `tensor` (input `name`) is a valid index into
/// `bound.rows` rows: `-rows <= v < rows`, as ONNX allows negative indices.
pub(super) fn check_indices(
    model: &str,
    name: &str,
    bound: &IndexBound,
    tensor: &NnTensor,
) -> Result<(), String> {
    let rows = i64::try_from(bound.rows).unwrap_or(i64::MAX);
    let out_of_range = |position: usize, value: i64| {
        format!(
            "model '{model}' input '{name}': value {value} at position {position} is out of range: it indexes a table of {rows} rows (node '{}'), so values must lie in {}..{rows}; check the stage's vocabulary or ids against the model's",
            bound.node, -rows
        )
    };
    let valid = |v: i64| (-rows..rows).contains(&v);
    match ElementType::from_nn(tensor.ty) {
        ElementType::I64 => {
            for (position, chunk) in tensor.data.chunks_exact(8).enumerate() {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(chunk);
                let v = i64::from_le_bytes(bytes);
                if !valid(v) {
                    return Err(out_of_range(position, v));
                }
            }
        }
        ElementType::I32 => {
            for (position, chunk) in tensor.data.chunks_exact(4).enumerate() {
                let mut bytes = [0u8; 4];
                bytes.copy_from_slice(chunk);
                let v = i64::from(i32::from_le_bytes(bytes));
                if !valid(v) {
                    return Err(out_of_range(position, v));
                }
            }
        }
        // Other types are refused by the model's input check or cast by it;
        // only integer inputs reach a lookup unchanged.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime_wasi_nn::wit::TensorType;

    fn ids(values: &[i64]) -> NnTensor {
        NnTensor {
            dimensions: vec![1, values.len() as u32],
            ty: TensorType::I64,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// An embedding lookup of 10 rows fed by input `ids` through a cast.
    fn embedding_model() -> TypedModel {
        let mut model = TypedModel::default();
        let source = model
            .add_source("ids", i32::fact([1usize, 3]))
            .expect("source");
        let cast = model
            .wire_node(
                "cast",
                Cast {
                    to: i64::datum_type(),
                },
                &[source],
            )
            .expect("cast")[0];
        let table = model
            .add_const("table", Tensor::zero::<f32>(&[10, 4]).expect("table"))
            .expect("const");
        let out = model
            .wire_node("lookup", Gather::new(0), &[table, cast])
            .expect("gather")[0];
        model.select_output_outlets(&[out]).expect("outputs");
        model
    }

    #[test]
    fn a_lookup_fed_by_an_input_is_found_through_a_cast() {
        let bounds = index_bounds(&embedding_model()).expect("analysis");
        assert_eq!(
            bounds,
            vec![IndexBound {
                input: 0,
                rows: 10,
                node: "lookup".into()
            }]
        );
    }

    #[test]
    fn indices_outside_the_table_are_named() {
        let bound = IndexBound {
            input: 0,
            rows: 10,
            node: "lookup".into(),
        };
        assert!(check_indices("m", "ids", &bound, &ids(&[0, 9, -10])).is_ok());
        let e = check_indices("m", "ids", &bound, &ids(&[1, 21152, 3])).unwrap_err();
        assert!(
            e.contains("input 'ids'")
                && e.contains("value 21152 at position 1")
                && e.contains("10 rows"),
            "{e}"
        );
        let e = check_indices("m", "ids", &bound, &ids(&[-11])).unwrap_err();
        assert!(e.contains("value -11 at position 0"), "{e}");
    }
}
