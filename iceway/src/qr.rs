//! QR codes of the `iceway dev --lan` URLs: in the terminal for a phone's camera app to scan, and
//! as PGM images (`--qr-dir`) that tests and image viewers read.

use std::path::Path;

use anyhow::Context;
use qrcode::render::unicode::Dense1x2;
use qrcode::{Color, EcLevel, QrCode};

/// Pixels per module and modules of quiet zone in the PGM images (the standard asks for 4).
const PGM_SCALE: usize = 8;
const PGM_QUIET: usize = 4;

/// Low error correction keeps a token-sized URL small enough to scan off a terminal; a screen has
/// no stains to correct for.
fn encode(text: &str) -> anyhow::Result<QrCode> {
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)
        .with_context(|| format!("a QR code of {} bytes", text.len()))
}

/// Two modules per character cell, with the quiet zone. Light modules are drawn and dark ones
/// left blank, which reads right on the usual light-on-dark terminal.
pub fn terminal(text: &str) -> anyhow::Result<String> {
    Ok(encode(text)?
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// Writes `text` as a binary PGM (netpbm P5) QR code to `path`.
pub fn write_pgm(text: &str, path: &Path) -> anyhow::Result<()> {
    let code = encode(text)?;
    let image = pgm(&code.to_colors(), code.width());
    std::fs::write(path, image).with_context(|| format!("cannot write {}", path.display()))
}

/// A `width`×`width` module grid as P5: black modules 0, white 255, with the quiet zone.
fn pgm(modules: &[Color], width: usize) -> Vec<u8> {
    let side = (width + 2 * PGM_QUIET) * PGM_SCALE;
    let mut out = format!("P5\n{side} {side}\n255\n").into_bytes();
    let header = out.len();
    out.resize(header + side * side, 255);
    for (i, color) in modules.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % width + PGM_QUIET, i / width + PGM_QUIET);
        for y in my * PGM_SCALE..(my + 1) * PGM_SCALE {
            let row = header + y * side;
            out[row + mx * PGM_SCALE..row + (mx + 1) * PGM_SCALE].fill(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgm_has_header_quiet_zone_and_scaled_modules() {
        // 2x2 modules: dark, light / light, dark.
        let modules = [Color::Dark, Color::Light, Color::Light, Color::Dark];
        let image = pgm(&modules, 2);
        let side = (2 + 2 * PGM_QUIET) * PGM_SCALE;
        let header = format!("P5\n{side} {side}\n255\n");
        assert!(image.starts_with(header.as_bytes()));
        let pixels = &image[header.len()..];
        assert_eq!(pixels.len(), side * side);
        let at = |x: usize, y: usize| pixels[y * side + x];
        let q = PGM_QUIET * PGM_SCALE;
        assert_eq!(at(0, 0), 255, "quiet zone");
        assert_eq!(at(q, q), 0, "first module dark");
        assert_eq!(at(q + PGM_SCALE - 1, q + PGM_SCALE - 1), 0);
        assert_eq!(at(q + PGM_SCALE, q), 255, "second module light");
        assert_eq!(at(q + 2 * PGM_SCALE - 1, q + 2 * PGM_SCALE - 1), 0);
        assert_eq!(
            pixels.iter().filter(|p| **p == 0).count(),
            2 * PGM_SCALE * PGM_SCALE
        );
    }

    #[test]
    fn terminal_code_has_quiet_zone_rows() {
        let text = terminal("https://192.168.1.20:8080/camera?token=x").expect("qr");
        let lines: Vec<&str> = text.lines().collect();
        // Light modules are drawn: the quiet zone is full blocks all round.
        assert!(lines[0].chars().all(|c| c == '\u{2588}'), "{}", lines[0]);
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[0].chars().count())
        );
    }
}
