//! Tensor JSON (`outpost run --input-file x.json`): one tensor
//! (`Tensor::from_json`) and a request of named tensors
//! (`tensor::tensors_from_json`). Every tensor that parses has a valid
//! layout, and writes back (`to_json`) to JSON, as a value and as text,
//! that parses to the same tensor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_host::Tensor;
use outpost_host::tensor::tensors_from_json;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(tensor) = Tensor::from_json("t", &value) {
        round_trip(&tensor);
    }
    if let Ok(tensors) = tensors_from_json(&value) {
        for tensor in &tensors {
            round_trip(tensor);
        }
    }
});

fn round_trip(tensor: &Tensor) {
    if let Err(e) = tensor.check_layout() {
        panic!("a parsed tensor has a bad layout: {e}");
    }
    let json = tensor.to_json();
    let again = match Tensor::from_json(&tensor.name, &json) {
        Ok(again) => again,
        Err(e) => panic!("{json} (written from {tensor:?}) does not parse back: {e}"),
    };
    assert_same(tensor, &again, "value");
    assert_eq!(again.to_json(), json);

    // What a file written and read again goes through.
    let text = json.to_string();
    let reread: Value = match serde_json::from_str(&text) {
        Ok(value) => value,
        Err(e) => panic!("written JSON {text} is not JSON: {e}"),
    };
    let again = match Tensor::from_json(&tensor.name, &reread) {
        Ok(again) => again,
        Err(e) => panic!("{text} does not parse back: {e}"),
    };
    assert_same(tensor, &again, "text");
}

fn assert_same(a: &Tensor, b: &Tensor, via: &str) {
    assert_eq!(a.name, b.name, "name via {via}");
    assert_eq!(a.dims, b.dims, "dims via {via}");
    assert_eq!(a.element_type, b.element_type, "type via {via}");
    assert_eq!(a.data, b.data, "data via {via} ({a:?} vs {b:?})");
}
