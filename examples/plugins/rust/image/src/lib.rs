//! Image processing example plugin: `grayscale`, `resize` (bilinear) and `blur` (gaussian).
//!
//! An image is raw RGB with a small header:
//!
//! ```text
//! width: u32 LE | height: u32 LE | width * height * 3 bytes of R, G, B, row by row
//! ```
//!
//! * `grayscale(image) -> image`: `(299 R + 587 G + 114 B + 500) / 1000` in integers, written
//!   to all three channels.
//! * `resize(new_width: u32 LE | new_height: u32 LE | image) -> image`: bilinear, sampling at
//!   pixel centres (`src = (dst + 0.5) * scale - 0.5`, clamped to the image), edges clamped.
//! * `blur(radius: f64 LE | image) -> image`: separable gaussian with `sigma = radius` over
//!   `2 * ceil(3 * sigma) + 1` taps, edges clamped; horizontal pass, then vertical, in `f64`.
//!
//! All results are rounded with `floor(v + 0.5)` and clamped to 0..=255. An image whose header
//! does not match its data is an error (`GuestError` on the host), never a trap.

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOC: plugsafe::CallArena = plugsafe::CallArena::new();

use plugsafe::{bail, Result};

/// Largest image, in pixels, the plugin accepts or produces (4096 x 4096).
const MAX_PIXELS: u64 = 1 << 24;
/// Largest blur radius; the kernel has `2 * ceil(3 * radius) + 1` taps.
const MAX_RADIUS: f64 = 64.0;

/// A parsed image borrowing its pixels from the input.
struct Image<'a> {
    width: usize,
    height: usize,
    pixels: &'a [u8],
}

impl Image<'_> {
    fn at(&self, x: usize, y: usize, c: usize) -> f64 {
        f64::from(self.pixels[(y * self.width + x) * 3 + c])
    }
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Checks the dimensions a header (or a resize request) gives.
fn check_size(width: u64, height: u64) -> Result<()> {
    if width == 0 || height == 0 {
        bail!("image must be at least 1x1, got {}x{}", width, height);
    }
    if width * height > MAX_PIXELS {
        bail!("image of {}x{} pixels is over the limit of {} pixels", width, height, MAX_PIXELS);
    }
    Ok(())
}

/// Parses and validates an image: the header must describe exactly the data that follows.
fn parse(data: &[u8]) -> Result<Image<'_>> {
    if data.len() < 8 {
        bail!("image header needs 8 bytes, got {}", data.len());
    }
    let (width, height) = (u64::from(le_u32(&data[0..4])), u64::from(le_u32(&data[4..8])));
    check_size(width, height)?;
    let needed = width * height * 3;
    let got = (data.len() - 8) as u64;
    if got != needed {
        bail!("header says {}x{} ({} bytes of pixels) but {} bytes follow", width, height, needed, got);
    }
    Ok(Image { width: width as usize, height: height as usize, pixels: &data[8..] })
}

/// A new output buffer holding the header for a `width` x `height` image.
fn new_image(width: usize, height: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + width * height * 3);
    out.extend_from_slice(&(width as u32).to_le_bytes());
    out.extend_from_slice(&(height as u32).to_le_bytes());
    out
}

fn to_u8(v: f64) -> u8 {
    let r = (v + 0.5).floor();
    if r < 0.0 {
        0
    } else if r > 255.0 {
        255
    } else {
        r as u8
    }
}

/// Grey = (299 R + 587 G + 114 B + 500) / 1000, in integers so every implementation agrees.
fn grayscale(input: &[u8]) -> Result<Vec<u8>> {
    let img = parse(input)?;
    let mut out = new_image(img.width, img.height);
    for px in img.pixels.chunks_exact(3) {
        let (r, g, b) = (u32::from(px[0]), u32::from(px[1]), u32::from(px[2]));
        let grey = ((299 * r + 587 * g + 114 * b + 500) / 1000) as u8;
        out.extend_from_slice(&[grey, grey, grey]);
    }
    Ok(out)
}

/// Where destination pixel `i` samples the source: the two neighbours and the weight of the
/// second one.
fn sample_points(src: usize, dst: usize) -> Vec<(usize, usize, f64)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|i| {
            let mut s = (i as f64 + 0.5) * scale - 0.5;
            if s < 0.0 {
                s = 0.0;
            }
            let last = (src - 1) as f64;
            if s > last {
                s = last;
            }
            let i0 = s.floor() as usize;
            let i1 = if i0 + 1 < src { i0 + 1 } else { src - 1 };
            (i0, i1, s - i0 as f64)
        })
        .collect()
}

/// Bilinear resize; the request is `new_width u32 LE | new_height u32 LE | image`.
fn resize(input: &[u8]) -> Result<Vec<u8>> {
    if input.len() < 8 {
        bail!("resize needs the new width and height (8 bytes) before the image");
    }
    let (dw, dh) = (u64::from(le_u32(&input[0..4])), u64::from(le_u32(&input[4..8])));
    check_size(dw, dh)?;
    let img = parse(&input[8..])?;
    let (dw, dh) = (dw as usize, dh as usize);
    let xs = sample_points(img.width, dw);
    let ys = sample_points(img.height, dh);
    let mut out = new_image(dw, dh);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            for c in 0..3 {
                let top = img.at(x0, y0, c) * (1.0 - fx) + img.at(x1, y0, c) * fx;
                let bottom = img.at(x0, y1, c) * (1.0 - fx) + img.at(x1, y1, c) * fx;
                out.push(to_u8(top * (1.0 - fy) + bottom * fy));
            }
        }
    }
    Ok(out)
}

/// The normalised gaussian kernel for `sigma`, `2 * ceil(3 * sigma) + 1` taps.
fn kernel(sigma: f64) -> Vec<f64> {
    let k = (3.0 * sigma).ceil() as i64;
    let mut weights: Vec<f64> = (-k..=k).map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp()).collect();
    let mut total = 0.0;
    for w in &weights {
        total += w;
    }
    for w in &mut weights {
        *w /= total;
    }
    weights
}

fn clamp_index(i: i64, len: usize) -> usize {
    if i < 0 {
        0
    } else if i as usize >= len {
        len - 1
    } else {
        i as usize
    }
}

/// Gaussian blur; the request is `radius f64 LE | image`. Radius 0 returns the image unchanged.
fn blur(input: &[u8]) -> Result<Vec<u8>> {
    if input.len() < 8 {
        bail!("blur needs the radius (8 bytes, f64) before the image");
    }
    let radius = f64::from_le_bytes([
        input[0], input[1], input[2], input[3], input[4], input[5], input[6], input[7],
    ]);
    // Written so that NaN fails too.
    if !(0.0..=MAX_RADIUS).contains(&radius) {
        // The value is not printed: float formatting would add ~20 KiB to the plugin.
        bail!("blur radius must be a number from 0 to 64");
    }
    let img = parse(&input[8..])?;
    let (w, h) = (img.width, img.height);
    let mut out = new_image(w, h);
    if radius == 0.0 {
        out.extend_from_slice(img.pixels);
        return Ok(out);
    }
    let weights = kernel(radius);
    let k = (weights.len() / 2) as i64;
    // Horizontal pass into f64, unrounded, then the vertical pass rounds once.
    let mut tmp = vec![0.0f64; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut acc = 0.0;
                for (j, wt) in weights.iter().enumerate() {
                    let sx = clamp_index(x as i64 + j as i64 - k, w);
                    acc += wt * img.at(sx, y, c);
                }
                tmp[(y * w + x) * 3 + c] = acc;
            }
        }
    }
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut acc = 0.0;
                for (j, wt) in weights.iter().enumerate() {
                    let sy = clamp_index(y as i64 + j as i64 - k, h);
                    acc += wt * tmp[(sy * w + x) * 3 + c];
                }
                out.push(to_u8(acc));
            }
        }
    }
    Ok(out)
}

plugsafe::export!(grayscale, resize, blur);
