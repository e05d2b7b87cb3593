//! The KServe v2 (Open Inference Protocol) view of pipelines and tensors,
//! shared by the HTTP and gRPC front ends: datatypes, shapes, and turning
//! the protocol's tensors into Outpost's and back.
//!
//! A pipeline is a model. An Outpost `utf8` tensor (one text) is a `BYTES`
//! tensor of shape `[1]`; numeric tensors map one to one (`f32` is `FP32`,
//! ...). A `u8` input also takes one `BYTES` element (an encoded image, as
//! Triton clients send files).

use super::error::ApiError;
use outpost_host::tensor::element_count;
use outpost_host::{Dim, ElementType, Tensor, TensorSpec};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The KServe datatype of an Outpost element type.
pub fn datatype(ty: ElementType) -> &'static str {
    match ty {
        ElementType::F16 => "FP16",
        ElementType::Bf16 => "BF16",
        ElementType::F32 => "FP32",
        ElementType::F64 => "FP64",
        ElementType::U8 => "UINT8",
        ElementType::I32 => "INT32",
        ElementType::I64 => "INT64",
        ElementType::Utf8 => "BYTES",
    }
}

fn element_of(datatype: &str) -> Option<ElementType> {
    Some(match datatype {
        "FP16" => ElementType::F16,
        "BF16" => ElementType::Bf16,
        "FP32" => ElementType::F32,
        "FP64" => ElementType::F64,
        "UINT8" => ElementType::U8,
        "INT32" => ElementType::I32,
        "INT64" => ElementType::I64,
        "BYTES" => ElementType::Utf8,
        _ => return None,
    })
}

/// A tensor's metadata entry: name, datatype, shape (-1 for symbolic sizes).
pub fn tensor_metadata(name: &str, spec: Option<&TensorSpec>) -> (String, String, Vec<i64>) {
    let ty = spec.and_then(|s| s.element_type);
    let shape = match (ty, spec.and_then(|s| s.dims.as_ref())) {
        // One text, whatever its length in bytes.
        (Some(ElementType::Utf8), _) => vec![1],
        (_, Some(dims)) => dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => i64::from(*n),
                Dim::Symbol(_) => -1,
            })
            .collect(),
        (_, None) => vec![-1],
    };
    let datatype = ty.map_or("BYTES", datatype);
    (name.to_owned(), datatype.to_owned(), shape)
}

/// A tensor as a request brings it, before it is checked.
pub struct WireInput {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: WireData,
}

/// Where a request tensor's elements are.
pub enum WireData {
    /// Little-endian elements; for `BYTES`, each element a 4-byte
    /// little-endian length and its bytes (Triton's binary layout).
    Raw(Vec<u8>),
    /// JSON `data`: a flat or nested list.
    Json(Value),
    /// `BYTES` elements given one by one (gRPC `bytes_contents`).
    Elements(Vec<Vec<u8>>),
}

/// Checks a request tensor against what the pipeline input declares and
/// makes it an Outpost tensor.
pub fn to_tensor(input: WireInput, spec: Option<&TensorSpec>) -> Result<Tensor, ApiError> {
    let name = input.name.clone();
    let bad = |message: String| ApiError::bad_request(format!("input '{name}': {message}"));
    let ty = element_of(&input.datatype).ok_or_else(|| {
        bad(format!(
            "datatype '{}' is not supported; use one of BYTES, FP16, BF16, FP32, FP64, UINT8, INT32, INT64",
            input.datatype
        ))
    })?;
    let mut dims = Vec::with_capacity(input.shape.len());
    for &d in &input.shape {
        dims.push(u32::try_from(d).map_err(|_| {
            bad(format!(
                "shape {:?} has a size that is negative or too large",
                input.shape
            ))
        })?);
    }
    let count = element_count(&dims)
        .ok_or_else(|| bad(format!("shape {:?} is too large to address", input.shape)))?;
    let wanted = spec.and_then(|s| s.element_type);
    if ty == ElementType::Utf8 {
        let elements = bytes_elements(input.data, &bad)?;
        if elements.len() != count {
            return Err(bad(format!(
                "shape {:?} holds {count} elements but {} came",
                input.shape,
                elements.len()
            )));
        }
        let [element] = <[Vec<u8>; 1]>::try_from(elements).map_err(|_| {
            bad(format!(
                "this pipeline takes one text per request (BYTES, shape [1]), not {count}; send one request each"
            ))
        })?;
        return match wanted {
            Some(ElementType::U8) => Ok(Tensor::bytes(&name, element)),
            Some(ElementType::Utf8) | None => {
                let text = String::from_utf8(element)
                    .map_err(|e| bad(format!("the text is not valid UTF-8 ({e})")))?;
                Ok(Tensor::text(&name, &text))
            }
            Some(other) => Err(bad(format!(
                "the pipeline takes {} here, not BYTES",
                datatype(other)
            ))),
        };
    }
    match wanted {
        Some(w) if w != ty => {
            return Err(bad(format!(
                "the pipeline takes {} here, not {}",
                datatype(w),
                input.datatype
            )));
        }
        _ => {}
    }
    let tensor = match input.data {
        WireData::Raw(data) => {
            let size = count.saturating_mul(ty.size());
            if data.len() != size {
                return Err(bad(format!(
                    "shape {:?} of {} needs {size} bytes, but {} came",
                    input.shape,
                    input.datatype,
                    data.len()
                )));
            }
            Tensor {
                name: name.clone(),
                dims,
                element_type: ty,
                data,
            }
        }
        WireData::Json(value) => {
            if matches!(ty, ElementType::F16 | ElementType::Bf16) {
                return Err(bad(format!(
                    "{} cannot be written as JSON numbers; send it as binary data (binary_data_size, or raw_input_contents over gRPC)",
                    input.datatype
                )));
            }
            // The shape is the client's word; the data decides the size.
            let mut flat = Vec::new();
            flatten(value, &mut flat);
            if flat.len() != count {
                return Err(bad(format!(
                    "shape {:?} holds {count} elements but data has {}",
                    input.shape,
                    flat.len()
                )));
            }
            let value = json!({"dims": dims, "type": ty.name(), "data": flat});
            // The same checks as tensors given as JSON to `outpost run`.
            Tensor::from_json(&name, &value).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        WireData::Elements(_) => {
            return Err(bad(format!(
                "{} data came as bytes elements; use the typed contents or raw_input_contents",
                input.datatype
            )));
        }
    };
    if let Some(spec) = spec {
        spec.check(&tensor).map_err(ApiError::bad_request)?;
    }
    Ok(tensor)
}

fn bytes_elements(
    data: WireData,
    bad: &dyn Fn(String) -> ApiError,
) -> Result<Vec<Vec<u8>>, ApiError> {
    match data {
        WireData::Elements(e) => Ok(e),
        WireData::Raw(raw) => {
            let mut out = Vec::new();
            let mut rest = raw.as_slice();
            while !rest.is_empty() {
                let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                    return Err(bad(
                        "binary BYTES data must be 4-byte little-endian lengths, each followed by that many bytes".into(),
                    ));
                };
                let len = u32::from_le_bytes(*len) as usize;
                if tail.len() < len {
                    return Err(bad(format!(
                        "a BYTES element says it has {len} bytes but only {} remain",
                        tail.len()
                    )));
                }
                let (element, tail) = tail.split_at(len);
                out.push(element.to_vec());
                rest = tail;
            }
            Ok(out)
        }
        WireData::Json(value) => {
            let mut flat = Vec::new();
            flatten(value, &mut flat);
            flat.into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.into_bytes()),
                    other => Err(bad(format!("BYTES data must be strings, found {other}"))),
                })
                .collect()
        }
    }
}

fn flatten(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.into_iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// A response tensor: its KServe datatype and shape, and its bytes in
/// Triton's binary layout.
pub struct WireOutput {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub raw: Vec<u8>,
    tensor: Tensor,
}

impl WireOutput {
    pub fn new(tensor: Tensor) -> Self {
        let (shape, raw) = if tensor.element_type == ElementType::Utf8 {
            let mut raw = Vec::with_capacity(tensor.data.len() + 4);
            raw.extend(
                u32::try_from(tensor.data.len())
                    .unwrap_or(u32::MAX)
                    .to_le_bytes(),
            );
            raw.extend(&tensor.data);
            (vec![1], raw)
        } else {
            (
                tensor.dims.iter().map(|&d| i64::from(d)).collect(),
                tensor.data.clone(),
            )
        };
        Self {
            name: tensor.name.clone(),
            datatype: datatype(tensor.element_type),
            shape,
            raw,
            tensor,
        }
    }

    /// The elements as JSON `data` (flat, row-major).
    pub fn json_data(&self) -> Result<Value, ApiError> {
        match self.tensor.element_type {
            ElementType::Utf8 => Ok(json!([String::from_utf8_lossy(&self.tensor.data)])),
            ElementType::F16 | ElementType::Bf16 => Err(ApiError::bad_request(format!(
                "output '{}' is {}, which JSON numbers cannot carry; ask for it as binary data (\"parameters\": {{\"binary_data\": true}})",
                self.name, self.datatype
            ))),
            _ => Ok(self
                .tensor
                .to_json()
                .get_mut("data")
                .map(Value::take)
                .unwrap_or_default()),
        }
    }
}

/// An HTTP inference request's JSON part.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InputJson>,
    #[serde(default)]
    pub outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputJson {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputJson {
    pub name: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(ty: ElementType, dims: Vec<Dim>) -> TensorSpec {
        TensorSpec {
            name: "x".into(),
            element_type: Some(ty),
            dims: Some(dims),
        }
    }

    fn input(datatype: &str, shape: Vec<i64>, data: WireData) -> WireInput {
        WireInput {
            name: "x".into(),
            datatype: datatype.into(),
            shape,
            data,
        }
    }

    #[test]
    fn one_text_is_bytes_of_shape_one() {
        let text = spec(ElementType::Utf8, vec![Dim::Symbol("n".into())]);
        let t = to_tensor(
            input("BYTES", vec![1], WireData::Json(json!(["stop"]))),
            Some(&text),
        )
        .unwrap();
        assert_eq!(t.data, b"stop");
        let mut raw = 4u32.to_le_bytes().to_vec();
        raw.extend(b"stop");
        let t = to_tensor(
            input("BYTES", vec![1], WireData::Raw(raw.clone())),
            Some(&text),
        )
        .unwrap();
        assert_eq!(t.data, b"stop");
        assert_eq!(WireOutput::new(t).raw, raw);
        let e = to_tensor(
            input("BYTES", vec![2], WireData::Json(json!(["a", "b"]))),
            Some(&text),
        )
        .unwrap_err();
        assert!(e.message.contains("one text per request"), "{}", e.message);
        let e = to_tensor(
            input("BYTES", vec![1], WireData::Raw(vec![9, 0, 0, 0, b'a'])),
            Some(&text),
        )
        .unwrap_err();
        assert!(e.message.contains("says it has 9 bytes"), "{}", e.message);
    }

    #[test]
    fn numbers_are_checked_against_the_declared_input() {
        let ids = spec(
            ElementType::I64,
            vec![Dim::Symbol("b".into()), Dim::Fixed(3)],
        );
        let t = to_tensor(
            input("INT64", vec![1, 3], WireData::Json(json!([[1, 2, 3]]))),
            Some(&ids),
        )
        .unwrap();
        assert_eq!(t.dims, vec![1, 3]);
        let e = to_tensor(
            input("FP32", vec![1, 3], WireData::Json(json!([1, 2, 3]))),
            Some(&ids),
        )
        .unwrap_err();
        assert!(
            e.message.contains("takes INT64 here, not FP32"),
            "{}",
            e.message
        );
        let e = to_tensor(
            input("INT64", vec![1, 4], WireData::Json(json!([1, 2, 3, 4]))),
            Some(&ids),
        )
        .unwrap_err();
        assert!(
            e.message.contains("dimension 1 is 4, not 3"),
            "{}",
            e.message
        );
        let e = to_tensor(
            input("INT64", vec![1, 3], WireData::Raw(vec![0; 8])),
            Some(&ids),
        )
        .unwrap_err();
        assert!(
            e.message.contains("needs 24 bytes, but 8 came"),
            "{}",
            e.message
        );
        // A shape of terabytes with one element of data: refused, not
        // allocated.
        let e = to_tensor(
            input("FP32", vec![4294967295, 64], WireData::Json(json!([0]))),
            None,
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("holds 274877906880 elements but data has 1"),
            "{}",
            e.message
        );
        let e = to_tensor(
            input("FP32", vec![4294967295, 64], WireData::Raw(vec![0; 4])),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("but 4 came"), "{}", e.message);
        let e = to_tensor(input("INT64", vec![-1], WireData::Json(json!([]))), None).unwrap_err();
        assert!(e.message.contains("negative"), "{}", e.message);
        let e = to_tensor(input("BOOL", vec![1], WireData::Json(json!([true]))), None).unwrap_err();
        assert!(
            e.message.contains("'BOOL' is not supported"),
            "{}",
            e.message
        );
    }
}
