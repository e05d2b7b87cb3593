//! `image-normalize`: decodes a PNG, resizes it (bilinear) and normalises it
//! per channel into the NCHW f32 tensor vision models take.
//!
//! Input: `image` u8 (the PNG file's bytes). Output: `pixel_values` f32
//! [1, 3, height, width]. Config: `width`, `height` (required); `mean` and
//! `std` (three values each, default ImageNet's), applied after scaling pixels
//! to [0, 1].

use outpost_guest::{
    Config, Dim, ElementType, Inputs, Stage, StageError, StageInfo, Tensor, TensorSpec,
};

/// The most bytes a decoded image may take; larger PNGs are refused.
const MAX_DECODED_BYTES: usize = 64 << 20;

struct ImageNormalize {
    width: u32,
    height: u32,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Stage for ImageNormalize {
    fn init(config: &Config) -> Result<Self, StageError> {
        config.deny_unknown(&["width", "height", "mean", "std"])?;
        let width: u32 = config.require("width")?;
        let height: u32 = config.require("height")?;
        if !(1..=8192).contains(&width) || !(1..=8192).contains(&height) {
            return Err(StageError::invalid_config(format!(
                "width {width} and height {height} must each be between 1 and 8192"
            )));
        }
        let std: [f32; 3] = config.get_or("std", [0.229, 0.224, 0.225])?;
        if std.iter().any(|s| *s <= 0.0) {
            return Err(StageError::invalid_config(format!(
                "std {std:?} must be positive"
            )));
        }
        Ok(ImageNormalize {
            width,
            height,
            mean: config.get_or("mean", [0.485, 0.456, 0.406])?,
            std,
        })
    }

    fn describe(&self) -> StageInfo {
        StageInfo::new(
            "image-normalize",
            env!("CARGO_PKG_VERSION"),
            "PNG to normalised NCHW f32",
        )
        .input(TensorSpec::new("image", ElementType::U8).dims([Dim::sym("bytes")]))
        .output(TensorSpec::new("pixel_values", ElementType::F32).dims([
            Dim::Fixed(1),
            Dim::Fixed(3),
            Dim::Fixed(self.height),
            Dim::Fixed(self.width),
        ]))
    }

    fn run(&mut self, mut inputs: Inputs) -> Result<Vec<Tensor>, StageError> {
        let image = inputs.take("image")?;
        image.expect_type(ElementType::U8)?;
        let rgb = decode_rgb(&image.data)?;
        let (w, h) = (self.width as usize, self.height as usize);
        let mut out = vec![0f32; 3 * w * h];
        for y in 0..h {
            for x in 0..w {
                let px = rgb.sample(x, y, w, h);
                for c in 0..3 {
                    out[c * w * h + y * w + x] = (px[c] / 255.0 - self.mean[c]) / self.std[c];
                }
            }
        }
        Ok(vec![Tensor::from_f32(
            "pixel_values",
            vec![1, 3, self.height, self.width],
            &out,
        )?])
    }
}

/// An 8-bit RGB image.
struct Rgb {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

fn decode_rgb(bytes: &[u8]) -> Result<Rgb, StageError> {
    let bad = |e: png::DecodingError| {
        StageError::invalid_input(format!("input 'image' is not a readable PNG: {e}"))
    };
    let mut decoder = png::Decoder::new_with_limits(
        std::io::Cursor::new(bytes),
        png::Limits {
            bytes: MAX_DECODED_BYTES,
        },
    );
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(bad)?;
    let size = reader.output_buffer_size().ok_or_else(|| {
        StageError::invalid_input("input 'image': the PNG's dimensions are too large")
    })?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(bad)?;
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(StageError::internal(
                "palette PNG was not expanded by the decoder",
            ));
        }
    };
    let (width, height) = (frame.width as usize, frame.height as usize);
    let mut pixels = Vec::with_capacity(width * height * 3);
    for row in buf[..frame.buffer_size()].chunks_exact(frame.line_size) {
        for px in row[..width * channels].chunks_exact(channels) {
            match channels {
                1 | 2 => pixels.extend_from_slice(&[px[0]; 3]),
                _ => pixels.extend_from_slice(&px[..3]),
            }
        }
    }
    Ok(Rgb {
        width,
        height,
        pixels,
    })
}

impl Rgb {
    /// The colour at output pixel (x, y) of an `out_w` × `out_h` resize,
    /// interpolated bilinearly with pixel centres aligned.
    fn sample(&self, x: usize, y: usize, out_w: usize, out_h: usize) -> [f32; 3] {
        let sx = ((x as f32 + 0.5) * self.width as f32 / out_w as f32 - 0.5).max(0.0);
        let sy = ((y as f32 + 0.5) * self.height as f32 / out_h as f32 - 0.5).max(0.0);
        let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
        let (x0, y0) = (x0.min(self.width - 1), y0.min(self.height - 1));
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
        let at = |x: usize, y: usize, c: usize| self.pixels[(y * self.width + x) * 3 + c] as f32;
        std::array::from_fn(|c| {
            let top = at(x0, y0, c) * (1.0 - fx) + at(x1, y0, c) * fx;
            let bottom = at(x0, y1, c) * (1.0 - fx) + at(x1, y1, c) * fx;
            top * (1.0 - fy) + bottom * fy
        })
    }
}

outpost_guest::export_stage!(ImageNormalize);
