//! The image normaliser: a real PNG in, a normalised NCHW tensor out.

use outpost_e2e::{Scratch, plugin};
use outpost_host::{EngineOptions, Host, RunError, Tensor};

fn png(width: u32, height: u32, color: png::ColorType, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(pixels).unwrap();
    writer.finish().unwrap();
    out
}

fn pipeline(scratch: &Scratch) -> std::path::PathBuf {
    let toml = format!(
        r#"
[pipeline]
name = "vision-pre"
inputs = ["image"]
[[stages]]
name = "normalize"
component = "{}"
config = {{ width = 4, height = 2, mean = [0.5, 0.5, 0.5], std = [0.5, 0.25, 1.0] }}
"#,
        plugin("image_normalize").display()
    );
    scratch.write("vision.toml", toml)
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn png_becomes_a_normalised_nchw_tensor() {
    let scratch = Scratch::new();
    let host = Host::new(&EngineOptions::default()).unwrap();
    let pipeline = host.load_pipeline(&pipeline(&scratch)).unwrap();

    // 2x1 RGB: left pixel pure red, right pixel white; resized to 4x2.
    let image = png(2, 1, png::ColorType::Rgb, &[255, 0, 0, 255, 255, 255]);
    let out = pipeline.run(vec![Tensor::bytes("image", image)]).unwrap();
    assert_eq!(out[0].name, "pixel_values");
    assert_eq!(out[0].dims, [1, 3, 2, 4]);
    let v = f32s(&out[0]);
    // Channel planes of 2x4: R is 1.0 everywhere -> (1 - .5)/.5 = 1.
    assert!(v[..8].iter().all(|r| (r - 1.0).abs() < 1e-6), "{v:?}");
    // G: leftmost column is red (0) -> (0 - .5)/.25 = -2; rightmost white -> 2.
    let g = &v[8..16];
    assert!(
        (g[0] + 2.0).abs() < 1e-6 && (g[3] - 2.0).abs() < 1e-6,
        "{g:?}"
    );
    // Bilinear: inner columns lie between, increasing left to right.
    assert!(g[0] < g[1] && g[1] < g[2] && g[2] < g[3], "{g:?}");

    // Grayscale is expanded to three equal channels.
    let gray = png(1, 1, png::ColorType::Grayscale, &[0]);
    let out = pipeline.run(vec![Tensor::bytes("image", gray)]).unwrap();
    let v = f32s(&out[0]);
    assert!(
        (v[0] + 1.0).abs() < 1e-6 && (v[8] + 2.0).abs() < 1e-6 && (v[16] + 0.5).abs() < 1e-6,
        "{v:?}"
    );
}

#[test]
fn a_corrupt_png_is_an_input_error() {
    let scratch = Scratch::new();
    let host = Host::new(&EngineOptions::default()).unwrap();
    let pipeline = host.load_pipeline(&pipeline(&scratch)).unwrap();
    let mut image = png(2, 2, png::ColorType::Rgb, &[7; 12]);
    image.truncate(image.len() / 2);
    match pipeline.run(vec![Tensor::bytes("image", image)]) {
        Err(RunError::Stage(e)) => assert!(e.to_string().contains("not a readable PNG"), "{e}"),
        other => panic!("{other:?}"),
    }
}
