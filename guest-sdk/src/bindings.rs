//! Bindings generated from the crate's `wit/` (a copy of the repository's, checked
//! by the tests) for the `streaming-stage` world (the
//! `stage` world plus `outpost:plugin/partials`; a component that never emits
//! does not import it). Stage authors use the re-exports at the crate root
//! instead.
#![allow(missing_docs, clippy::all)]

wit_bindgen::generate!({
    world: "streaming-stage",
    path: "wit",
    pub_export_macro: true,
    export_macro_name: "export",
    default_bindings_module: "::outpost_guest::bindings",
    runtime_path: "::outpost_guest::__private::wit_bindgen::rt",
    generate_all,
});
