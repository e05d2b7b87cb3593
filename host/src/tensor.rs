//! Tensors on the host side: validation against their declared layout, and
//! conversion to and from JSON and wasi-nn.

use crate::bindings::{Dim, ElementType, Tensor, TensorSpec};
use serde_json::{Map, Value, json};
use std::fmt;
use wasmtime_wasi_nn::wit::TensorType;

impl ElementType {
    /// Bytes per element (`utf8` counts bytes of text).
    pub fn size(self) -> usize {
        match self {
            ElementType::U8 | ElementType::Utf8 => 1,
            ElementType::F16 | ElementType::Bf16 => 2,
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F64 | ElementType::I64 => 8,
        }
    }

    /// The name used in pipeline files, JSON and messages.
    pub fn name(self) -> &'static str {
        match self {
            ElementType::F16 => "f16",
            ElementType::F32 => "f32",
            ElementType::F64 => "f64",
            ElementType::Bf16 => "bf16",
            ElementType::U8 => "u8",
            ElementType::I32 => "i32",
            ElementType::I64 => "i64",
            ElementType::Utf8 => "utf8",
        }
    }

    /// Parses a name as written by [`ElementType::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        ALL_TYPES.iter().copied().find(|t| t.name() == name)
    }

    /// The wasi-nn element type, where wasi-nn has one.
    pub fn to_nn(self) -> Option<TensorType> {
        Some(match self {
            ElementType::F16 => TensorType::Fp16,
            ElementType::F32 => TensorType::Fp32,
            ElementType::F64 => TensorType::Fp64,
            ElementType::Bf16 => TensorType::Bf16,
            ElementType::U8 => TensorType::U8,
            ElementType::I32 => TensorType::I32,
            ElementType::I64 => TensorType::I64,
            ElementType::Utf8 => return None,
        })
    }

    /// The element type of a wasi-nn tensor type.
    pub fn from_nn(ty: TensorType) -> Self {
        match ty {
            TensorType::Fp16 => ElementType::F16,
            TensorType::Fp32 => ElementType::F32,
            TensorType::Fp64 => ElementType::F64,
            TensorType::Bf16 => ElementType::Bf16,
            TensorType::U8 => ElementType::U8,
            TensorType::I32 => ElementType::I32,
            TensorType::I64 => ElementType::I64,
        }
    }
}

const ALL_TYPES: [ElementType; 8] = [
    ElementType::F16,
    ElementType::F32,
    ElementType::F64,
    ElementType::Bf16,
    ElementType::U8,
    ElementType::I32,
    ElementType::I64,
    ElementType::Utf8,
];

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The number of elements in a tensor of shape `dims`, or `None` on overflow.
pub fn element_count(dims: &[u32]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
}

impl Tensor {
    /// A `utf8` tensor holding `text`.
    pub fn text(name: &str, text: &str) -> Self {
        Tensor {
            name: name.to_owned(),
            dims: vec![u32::try_from(text.len()).unwrap_or(u32::MAX)],
            element_type: ElementType::Utf8,
            data: text.as_bytes().to_vec(),
        }
    }

    /// A `u8` tensor holding raw bytes (an encoded image, say).
    pub fn bytes(name: &str, bytes: Vec<u8>) -> Self {
        Tensor {
            name: name.to_owned(),
            dims: vec![u32::try_from(bytes.len()).unwrap_or(u32::MAX)],
            element_type: ElementType::U8,
            data: bytes,
        }
    }

    /// Checks that `data` holds exactly the bytes `dims` and the element type
    /// call for; the message says what was expected and what came.
    pub fn check_layout(&self) -> Result<(), String> {
        let expected =
            element_count(&self.dims).and_then(|n| n.checked_mul(self.element_type.size()));
        match expected {
            Some(n) if n == self.data.len() => {
                if self.element_type == ElementType::Utf8
                    && let Err(e) = std::str::from_utf8(&self.data)
                {
                    return Err(format!(
                        "tensor '{}' is utf8 but its bytes are not valid UTF-8 ({e}); return u8 for raw bytes",
                        self.name
                    ));
                }
                Ok(())
            }
            Some(n) => Err(format!(
                "tensor '{}' has shape {:?} of {} ({n} bytes) but carries {} bytes",
                self.name,
                self.dims,
                self.element_type,
                self.data.len()
            )),
            None => Err(format!(
                "tensor '{}' has shape {:?}, too large to address",
                self.name, self.dims
            )),
        }
    }

    /// The tensor as JSON: text for `utf8`, else `{dims, type, data}` with
    /// numbers (f16/bf16 as raw u16 bits).
    pub fn to_json(&self) -> Value {
        if self.element_type == ElementType::Utf8 {
            return Value::String(String::from_utf8_lossy(&self.data).into_owned());
        }
        let size = self.element_type.size();
        let values: Vec<Value> = self
            .data
            .chunks_exact(size)
            .map(|b| match self.element_type {
                ElementType::F32 => json!(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ElementType::F64 => json!(f64::from_le_bytes(b.try_into().unwrap_or_default())),
                ElementType::I32 => json!(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ElementType::I64 => json!(i64::from_le_bytes(b.try_into().unwrap_or_default())),
                ElementType::U8 => json!(b[0]),
                ElementType::F16 | ElementType::Bf16 => json!(u16::from_le_bytes([b[0], b[1]])),
                ElementType::Utf8 => Value::Null,
            })
            .collect();
        json!({ "dims": self.dims, "type": self.element_type.name(), "data": values })
    }

    /// Reads a tensor named `name` from JSON `{ "dims": [..], "type": "f32",
    /// "data": [..] }` (or a string, read as `utf8` text).
    pub fn from_json(name: &str, value: &Value) -> Result<Self, String> {
        if let Value::String(text) = value {
            return Ok(Tensor::text(name, text));
        }
        let object = value.as_object().ok_or_else(|| {
            format!("tensor '{name}': expected a string or an object with dims, type and data")
        })?;
        if let Some(key) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "dims" | "type" | "data"))
        {
            return Err(format!(
                "tensor '{name}': unknown key '{key}'; a tensor has dims, type and data"
            ));
        }
        let field = |key: &str| {
            object
                .get(key)
                .ok_or_else(|| format!("tensor '{name}': missing key '{key}'"))
        };
        let dims: Vec<u32> = serde_json::from_value(field("dims")?.clone()).map_err(|e| {
            format!("tensor '{name}': dims must be a list of non-negative integers: {e}")
        })?;
        let type_name = field("type")?.as_str().unwrap_or_default();
        let element_type = ElementType::from_name(type_name).ok_or_else(|| {
            format!(
                "tensor '{name}': unknown type '{type_name}'; use one of {}",
                ALL_TYPES.map(ElementType::name).join(", ")
            )
        })?;
        let data = field("data")?
            .as_array()
            .ok_or_else(|| format!("tensor '{name}': data must be a flat list of numbers"))?;
        let mut bytes = Vec::with_capacity(data.len() * element_type.size());
        for (i, v) in data.iter().enumerate() {
            let bad = || format!("tensor '{name}': data[{i}] = {v} is not a valid {element_type}");
            match element_type {
                ElementType::F32 => {
                    // Past f32's range the cast gives infinity, which JSON
                    // cannot carry (`to_json` would write null).
                    let x = v.as_f64().ok_or_else(bad)? as f32;
                    if !x.is_finite() {
                        return Err(format!(
                            "tensor '{name}': data[{i}] = {v} is out of the range of f32"
                        ));
                    }
                    bytes.extend(x.to_le_bytes())
                }
                ElementType::F64 => bytes.extend(v.as_f64().ok_or_else(bad)?.to_le_bytes()),
                ElementType::I32 => bytes.extend(
                    i32::try_from(v.as_i64().ok_or_else(bad)?)
                        .map_err(|_| bad())?
                        .to_le_bytes(),
                ),
                ElementType::I64 => bytes.extend(v.as_i64().ok_or_else(bad)?.to_le_bytes()),
                ElementType::U8 => {
                    bytes.push(u8::try_from(v.as_u64().ok_or_else(bad)?).map_err(|_| bad())?)
                }
                ElementType::F16 | ElementType::Bf16 => bytes.extend(
                    u16::try_from(v.as_u64().ok_or_else(bad)?)
                        .map_err(|_| bad())?
                        .to_le_bytes(),
                ),
                ElementType::Utf8 => {
                    return Err(format!(
                        "tensor '{name}': give utf8 tensors as a JSON string"
                    ));
                }
            }
        }
        let tensor = Tensor {
            name: name.to_owned(),
            dims,
            element_type,
            data: bytes,
        };
        tensor.check_layout()?;
        Ok(tensor)
    }
}

/// Reads several named tensors from a JSON object `{ "name": tensor, ... }`.
pub fn tensors_from_json(value: &Value) -> Result<Vec<Tensor>, String> {
    let object: &Map<String, Value> = value
        .as_object()
        .ok_or("expected a JSON object mapping tensor names to tensors")?;
    object
        .iter()
        .map(|(name, v)| Tensor::from_json(name, v))
        .collect()
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

impl TensorSpec {
    /// Whether this spec stands for "any tensors" (`*`).
    pub fn is_wildcard(&self) -> bool {
        self.name == "*"
    }

    /// `f32[batch, 384]`, `any[?]` and the like.
    pub fn shape_string(&self) -> String {
        let ty = self.element_type.map_or("any", ElementType::name);
        match &self.dims {
            Some(dims) => {
                let dims: Vec<String> = dims.iter().map(ToString::to_string).collect();
                format!("{ty}[{}]", dims.join(", "))
            }
            None => format!("{ty}[..]"),
        }
    }

    /// Why a tensor produced as `self` cannot be consumed as `consumer`, if it
    /// cannot: element types differ, ranks differ, or two fixed sizes differ.
    pub fn incompatibility(&self, consumer: &TensorSpec) -> Option<String> {
        if let (Some(a), Some(b)) = (self.element_type, consumer.element_type)
            && a != b
        {
            return Some(format!("element type {a} is not {b}"));
        }
        if let (Some(a), Some(b)) = (&self.dims, &consumer.dims) {
            if a.len() != b.len() {
                return Some(format!("rank {} is not {}", a.len(), b.len()));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if let (Dim::Fixed(x), Dim::Fixed(y)) = (x, y)
                    && x != y
                {
                    return Some(format!("dimension {i} is {x}, not {y}"));
                }
            }
        }
        None
    }

    /// Checks a concrete tensor against this spec: element type, rank, fixed
    /// sizes.
    pub fn check(&self, tensor: &Tensor) -> Result<(), String> {
        let actual = TensorSpec {
            name: tensor.name.clone(),
            element_type: Some(tensor.element_type),
            dims: Some(tensor.dims.iter().map(|&d| Dim::Fixed(d)).collect()),
        };
        match actual.incompatibility(self) {
            Some(why) => Err(format!(
                "tensor '{}' is {} but {} was declared: {why}",
                tensor.name,
                actual.shape_string(),
                self.shape_string()
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_of_every_numeric_type() {
        for (ty, data) in [
            ("f32", json!([1.5, -2.0])),
            ("f64", json!([1.5, -2.0])),
            ("i32", json!([7, -8])),
            ("i64", json!([7, -8])),
            ("u8", json!([0, 255])),
            ("f16", json!([15360, 0])),
        ] {
            let value = json!({ "dims": [2], "type": ty, "data": data });
            let tensor = Tensor::from_json("t", &value).unwrap();
            assert_eq!(tensor.to_json(), value, "{ty}");
        }
    }

    /// Fuzzing (tensor_json): `1e39` as f32 became infinity, which
    /// `to_json` writes as null, so the tensor did not parse back.
    #[test]
    fn f32_past_its_range_is_refused_not_made_infinite() {
        let f32_of =
            |v: Value| Tensor::from_json("x", &json!({"dims": [1], "type": "f32", "data": [v]}));
        let e = f32_of(json!(1e39)).unwrap_err();
        assert!(
            e.contains("data[0] = 1e+39 is out of the range of f32"),
            "{e}"
        );
        assert!(f32_of(json!(-1e39)).is_err());
        let max = f32_of(json!(f32::MAX)).unwrap();
        assert_eq!(
            Tensor::from_json("x", &max.to_json()).unwrap().data,
            max.data
        );
    }

    /// Found by host/fuzz `tensor_json`: an f64 written as JSON text and
    /// read back came back one unit in the last place off, because
    /// serde_json parsed floats with its fast, inexact path (now
    /// `float_roundtrip`).
    #[test]
    fn f64_survives_json_text() {
        let value = json!({"dims": [], "type": "f64", "data": [9223372036854750878u64]});
        let tensor = Tensor::from_json("x", &value).unwrap();
        let text = serde_json::to_string(&tensor.to_json()).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(Tensor::from_json("x", &back).unwrap().data, tensor.data);
    }

    #[test]
    fn json_errors_name_the_tensor_and_the_problem() {
        let err = |v: Value| Tensor::from_json("ids", &v).unwrap_err();
        assert!(err(json!({"dims": [2], "type": "i64", "data": [1]})).contains("carries 8 bytes"));
        assert!(
            err(json!({"dims": [1], "type": "u8", "data": [256]}))
                .contains("data[0] = 256 is not a valid u8")
        );
        assert!(
            err(json!({"dims": [1], "type": "i64", "data": [1], "shape": 1}))
                .contains("unknown key 'shape'")
        );
        assert!(err(json!({"type": "i64", "data": []})).contains("missing key 'dims'"));
        assert!(err(json!(3)).contains("'ids'"));
    }

    #[test]
    fn utf8_tensors_must_hold_valid_utf8() {
        let text = |data: Vec<u8>| Tensor {
            name: "label".into(),
            dims: vec![data.len() as u32],
            element_type: ElementType::Utf8,
            data,
        };
        assert!(text("stop".into()).check_layout().is_ok());
        let e = text(vec![b's', 0xff, 0xfe]).check_layout().unwrap_err();
        assert!(
            e.contains("'label'") && e.contains("not valid UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn specs_say_why_they_do_not_fit() {
        let spec = |ty, dims: Vec<Dim>| TensorSpec {
            name: "x".into(),
            element_type: ty,
            dims: Some(dims),
        };
        let f32_bs = spec(
            Some(ElementType::F32),
            vec![Dim::Symbol("b".into()), Dim::Fixed(384)],
        );
        let i64_bs = spec(
            Some(ElementType::I64),
            vec![Dim::Symbol("b".into()), Dim::Fixed(384)],
        );
        let f32_b3 = spec(
            Some(ElementType::F32),
            vec![Dim::Symbol("b".into()), Dim::Fixed(3)],
        );
        let any = TensorSpec {
            name: "x".into(),
            element_type: None,
            dims: None,
        };
        assert_eq!(f32_bs.incompatibility(&f32_bs), None);
        assert_eq!(f32_bs.incompatibility(&any), None);
        assert_eq!(
            f32_bs.incompatibility(&i64_bs).as_deref(),
            Some("element type f32 is not i64")
        );
        assert_eq!(
            f32_bs.incompatibility(&f32_b3).as_deref(),
            Some("dimension 1 is 384, not 3")
        );
        assert_eq!(f32_bs.shape_string(), "f32[b, 384]");
        assert_eq!(any.shape_string(), "any[..]");
    }
}
