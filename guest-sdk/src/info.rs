//! Builders for [`StageInfo`] and [`TensorSpec`].

use crate::{Dim, ElementType, StageInfo, TensorSpec};

impl StageInfo {
    /// A stage with no declared tensors yet; add them with [`StageInfo::input`]
    /// and [`StageInfo::output`].
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Declares a tensor that `run` needs.
    pub fn input(mut self, spec: TensorSpec) -> Self {
        self.inputs.push(spec);
        self
    }

    /// Declares a tensor that `run` returns.
    pub fn output(mut self, spec: TensorSpec) -> Self {
        self.outputs.push(spec);
        self
    }
}

impl TensorSpec {
    /// A tensor of a known element type whose shape is set with
    /// [`TensorSpec::dims`] or left open with [`TensorSpec::any_shape`].
    pub fn new(name: &str, element_type: ElementType) -> Self {
        Self {
            name: name.to_owned(),
            element_type: Some(element_type),
            dims: None,
        }
    }

    /// A tensor of any element type and shape (a stage that forwards tensors).
    pub fn any(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            element_type: None,
            dims: None,
        }
    }

    /// Fixes the shape: each entry is a [`Dim::Fixed`] size or a [`Dim::Symbol`].
    pub fn dims(mut self, dims: impl IntoIterator<Item = Dim>) -> Self {
        self.dims = Some(dims.into_iter().collect());
        self
    }

    /// Leaves the rank and shape open.
    pub fn any_shape(mut self) -> Self {
        self.dims = None;
        self
    }
}

impl Dim {
    /// A dimension named `name` whose size is known per request.
    pub fn sym(name: &str) -> Self {
        Dim::Symbol(name.to_owned())
    }
}
