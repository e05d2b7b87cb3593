//! The [`Stage`] trait and the glue between it and the generated bindings.

use crate::{Config, RawConfig, StageError, StageInfo, Tensor};
use std::cell::RefCell;
use std::thread::LocalKey;

/// A pipeline stage.
pub trait Stage: Sized + 'static {
    /// Builds the stage from its configuration. Runs once per instance, so
    /// parse vocabularies and load models here, not in [`Stage::run`].
    fn init(config: &Config) -> Result<Self, StageError>;

    /// Names the stage and declares the tensors it takes and returns.
    fn describe(&self) -> StageInfo;

    /// Handles one request.
    fn run(&mut self, inputs: Inputs) -> Result<Vec<Tensor>, StageError>;
}

/// The tensors of one request, taken out by name.
pub struct Inputs {
    tensors: Vec<Tensor>,
}

impl Inputs {
    /// Wraps the tensors a request carries.
    pub fn new(tensors: Vec<Tensor>) -> Self {
        Self { tensors }
    }

    /// Removes and returns the tensor named `name`; fails, listing what did
    /// arrive, when there is none.
    pub fn take(&mut self, name: &str) -> Result<Tensor, StageError> {
        match self.tensors.iter().position(|t| t.name == name) {
            Some(i) => Ok(self.tensors.swap_remove(i)),
            None => Err(StageError::invalid_input(format!(
                "missing input tensor '{name}'; received: [{}]",
                self.names().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Removes and returns the tensor named `name` if it is there.
    pub fn take_optional(&mut self, name: &str) -> Option<Tensor> {
        let i = self.tensors.iter().position(|t| t.name == name)?;
        Some(self.tensors.swap_remove(i))
    }

    /// The names of the tensors not taken yet.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.name.as_str())
    }

    /// All tensors not taken yet.
    pub fn into_vec(self) -> Vec<Tensor> {
        self.tensors
    }
}

/// Where an instance keeps its stage between calls.
#[doc(hidden)]
pub struct StageSlot<S>(RefCell<Option<S>>);

impl<S> StageSlot<S> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Self(RefCell::new(None))
    }
}

const NOT_INITIALIZED: &str = "the host called the stage before `init` succeeded";

#[doc(hidden)]
pub fn init<S: Stage>(
    slot: &'static LocalKey<StageSlot<S>>,
    raw: RawConfig,
) -> Result<(), StageError> {
    let stage = S::init(&Config::new(raw))?;
    slot.with(|s| *s.0.borrow_mut() = Some(stage));
    Ok(())
}

#[doc(hidden)]
pub fn describe<S: Stage>(slot: &'static LocalKey<StageSlot<S>>) -> StageInfo {
    slot.with(|s| match s.0.borrow().as_ref() {
        Some(stage) => stage.describe(),
        // The host always initialises first; reaching this is a host bug, and
        // trapping is the only honest answer a `describe` without a result has.
        None => panic!("{NOT_INITIALIZED}"),
    })
}

#[doc(hidden)]
pub fn run<S: Stage>(
    slot: &'static LocalKey<StageSlot<S>>,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, StageError> {
    slot.with(|s| match s.0.borrow_mut().as_mut() {
        Some(stage) => stage.run(Inputs::new(inputs)),
        None => Err(StageError::internal(NOT_INITIALIZED)),
    })
}
