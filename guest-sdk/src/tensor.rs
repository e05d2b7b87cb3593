//! Typed views of [`Tensor`] bytes, constructors and shape checks.

use crate::{ElementType, StageError, Tensor};

impl ElementType {
    /// Bytes per element (`utf8` counts one per byte of text).
    pub fn size(self) -> usize {
        match self {
            ElementType::U8 | ElementType::Utf8 => 1,
            ElementType::F16 | ElementType::Bf16 => 2,
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F64 | ElementType::I64 => 8,
        }
    }

    /// The name used in pipeline files and messages (`f32`, `i64`, `utf8`, ...).
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
}

/// Elements that can be read from and written to tensor bytes.
pub trait Element: Copy {
    /// The tensor element type holding values of this Rust type.
    const TYPE: ElementType;
    /// Reads one element from exactly `size_of::<Self>()` little-endian bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Appends the little-endian bytes of `self`.
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($t:ty, $ty:expr) => {
        impl Element for $t {
            const TYPE: ElementType = $ty;
            fn read(bytes: &[u8]) -> Self {
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(bytes);
                <$t>::from_le_bytes(raw)
            }
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
element!(f32, ElementType::F32);
element!(f64, ElementType::F64);
element!(i32, ElementType::I32);
element!(i64, ElementType::I64);
element!(u8, ElementType::U8);

impl Tensor {
    /// A tensor of `values` laid out row-major in `dims`; fails when the number
    /// of values is not the product of `dims`.
    pub fn from_values<T: Element>(
        name: &str,
        dims: Vec<u32>,
        values: &[T],
    ) -> Result<Self, StageError> {
        let expected = element_count(&dims);
        if expected != Some(values.len()) {
            return Err(StageError::internal(format!(
                "tensor '{name}': dims {dims:?} hold {} elements but {} values were given",
                expected.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
                values.len()
            )));
        }
        let mut data = Vec::with_capacity(values.len() * T::TYPE.size());
        for v in values {
            v.write(&mut data);
        }
        Ok(Self {
            name: name.to_owned(),
            dims,
            element_type: T::TYPE,
            data,
        })
    }

    /// An `f32` tensor; see [`Tensor::from_values`].
    pub fn from_f32(name: &str, dims: Vec<u32>, values: &[f32]) -> Result<Self, StageError> {
        Self::from_values(name, dims, values)
    }

    /// An `i64` tensor; see [`Tensor::from_values`].
    pub fn from_i64(name: &str, dims: Vec<u32>, values: &[i64]) -> Result<Self, StageError> {
        Self::from_values(name, dims, values)
    }

    /// A `utf8` tensor holding `text`.
    pub fn from_text(name: &str, text: &str) -> Self {
        Self {
            name: name.to_owned(),
            dims: vec![u32::try_from(text.len()).unwrap_or(u32::MAX)],
            element_type: ElementType::Utf8,
            data: text.as_bytes().to_vec(),
        }
    }

    /// The elements as `T`, after checking the element type and that the byte
    /// length matches the dimensions.
    pub fn to_values<T: Element>(&self) -> Result<Vec<T>, StageError> {
        self.expect_type(T::TYPE)?;
        self.check_len()?;
        Ok(self
            .data
            .chunks_exact(T::TYPE.size())
            .map(T::read)
            .collect())
    }

    /// The elements as `f32`; see [`Tensor::to_values`].
    pub fn to_f32(&self) -> Result<Vec<f32>, StageError> {
        self.to_values()
    }

    /// The elements as `i64`; see [`Tensor::to_values`].
    pub fn to_i64(&self) -> Result<Vec<i64>, StageError> {
        self.to_values()
    }

    /// The text of a `utf8` tensor (raw `u8` tensors are accepted too when they
    /// hold valid UTF-8).
    pub fn text(&self) -> Result<&str, StageError> {
        if !matches!(self.element_type, ElementType::Utf8 | ElementType::U8) {
            return Err(self.type_error("utf8"));
        }
        std::str::from_utf8(&self.data).map_err(|e| {
            StageError::invalid_input(format!("tensor '{}' is not valid UTF-8: {e}", self.name))
        })
    }

    /// Fails unless the tensor holds elements of type `ty`.
    pub fn expect_type(&self, ty: ElementType) -> Result<(), StageError> {
        if self.element_type == ty {
            Ok(())
        } else {
            Err(self.type_error(ty.name()))
        }
    }

    /// Fails unless the tensor has `rank` dimensions; returns them as `usize`.
    pub fn expect_rank(&self, rank: usize) -> Result<Vec<usize>, StageError> {
        if self.dims.len() != rank {
            return Err(StageError::invalid_input(format!(
                "tensor '{}' has shape {:?} (rank {}), expected rank {rank}",
                self.name,
                self.dims,
                self.dims.len()
            )));
        }
        Ok(self.dims.iter().map(|&d| d as usize).collect())
    }

    /// Fails unless the dimensions are exactly `dims`.
    pub fn expect_dims(&self, dims: &[u32]) -> Result<(), StageError> {
        if self.dims != dims {
            return Err(StageError::invalid_input(format!(
                "tensor '{}' has shape {:?}, expected {dims:?}",
                self.name, self.dims
            )));
        }
        Ok(())
    }

    fn check_len(&self) -> Result<(), StageError> {
        let expected =
            element_count(&self.dims).and_then(|n| n.checked_mul(self.element_type.size()));
        if expected != Some(self.data.len()) {
            return Err(StageError::invalid_input(format!(
                "tensor '{}': shape {:?} of {} needs {} bytes but it holds {}",
                self.name,
                self.dims,
                self.element_type.name(),
                expected.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
                self.data.len()
            )));
        }
        Ok(())
    }

    fn type_error(&self, expected: &str) -> StageError {
        StageError::invalid_input(format!(
            "tensor '{}' holds {} elements, expected {expected}",
            self.name,
            self.element_type.name()
        ))
    }
}

/// The number of elements in a tensor of shape `dims`, or `None` on overflow.
pub(crate) fn element_count(dims: &[u32]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
}

#[cfg(test)]
mod tests {
    use crate::{ElementType, ErrorKind, Tensor};

    #[test]
    fn values_round_trip_through_bytes() {
        let t = Tensor::from_f32("x", vec![2, 2], &[1.0, -2.5, 3.25, 0.0]).unwrap();
        assert_eq!(t.data.len(), 16);
        assert_eq!(t.to_f32().unwrap(), [1.0, -2.5, 3.25, 0.0]);
        let t = Tensor::from_i64("ids", vec![3], &[101, -1, 102]).unwrap();
        assert_eq!(t.to_i64().unwrap(), [101, -1, 102]);
    }

    #[test]
    fn a_count_that_does_not_fit_the_dims_is_refused() {
        let error = Tensor::from_f32("x", vec![2, 2], &[1.0]).err().unwrap();
        assert!(
            error.message.contains("hold 4 elements but 1"),
            "{}",
            error.message
        );
    }

    #[test]
    fn reading_checks_type_and_length() {
        let t = Tensor::from_f32("x", vec![1], &[1.0]).unwrap();
        let error = t.to_i64().err().unwrap();
        assert_eq!(error.kind, ErrorKind::InvalidInput);
        assert!(
            error.message.contains("holds f32 elements, expected i64"),
            "{}",
            error.message
        );
        let short = Tensor {
            data: vec![0; 3],
            ..t
        };
        assert!(
            short
                .to_f32()
                .err()
                .unwrap()
                .message
                .contains("needs 4 bytes but it holds 3")
        );
    }

    #[test]
    fn text_tensors() {
        let t = Tensor::from_text("text", "héllo");
        assert_eq!(
            (t.dims.as_slice(), t.element_type),
            (&[6u32][..], ElementType::Utf8)
        );
        assert_eq!(t.text().unwrap(), "héllo");
        assert!(t.expect_rank(2).is_err());
    }
}
