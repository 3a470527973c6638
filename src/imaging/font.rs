//! A tiny 5×7 bitmap font: just the characters the loss curve writes (numbers in plain or
//! exponent notation and the axis titles).

use image::{Rgb, RgbImage};

pub(crate) const GLYPH_W: i64 = 5;
pub(crate) const GLYPH_H: i64 = 7;
/// Horizontal distance from one character to the next, at scale 1.
pub(crate) const ADVANCE: i64 = GLYPH_W + 1;

/// Rows top to bottom; bit 4 is the leftmost column.
fn glyph(ch: char) -> Option<[u8; 7]> {
    Some(match ch {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x0E, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        'g' => [0x00, 0x00, 0x0F, 0x11, 0x0F, 0x01, 0x0E],
        'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'o' => [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
        'p' => [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        's' => [0x00, 0x00, 0x0F, 0x10, 0x0E, 0x01, 0x1E],
        't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
        ' ' => [0; 7],
        _ => return None,
    })
}

/// Width in pixels of `text` drawn at `scale`.
pub(crate) fn text_width(text: &str, scale: i64) -> i64 {
    let n = text.chars().count() as i64;
    (n * ADVANCE - 1).max(0) * scale
}

/// Draws `text` with its top-left corner at (x, y); pixels outside the image are skipped, and
/// characters the font lacks are drawn as a hollow box so they are noticed.
pub(crate) fn draw_text(
    img: &mut RgbImage,
    x: i64,
    y: i64,
    text: &str,
    scale: i64,
    colour: Rgb<u8>,
) {
    let unknown = [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F];
    for (k, ch) in text.chars().enumerate() {
        let rows = glyph(ch).unwrap_or(unknown);
        let left = x + k as i64 * ADVANCE * scale;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits >> (GLYPH_W - 1 - col) & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (left + col * scale + dx, y + r as i64 * scale + dy);
                        if px >= 0 && py >= 0 && px < img.width() as i64 && py < img.height() as i64
                        {
                            img.put_pixel(px as u32, py as u32, colour);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_characters_are_all_present_and_distinct() {
        let chars = "0123456789.-+e";
        let glyphs: Vec<_> = chars.chars().map(|c| glyph(c).expect("glyph")).collect();
        for i in 0..glyphs.len() {
            for j in 0..i {
                assert_ne!(
                    glyphs[i],
                    glyphs[j],
                    "{:?} and {:?}",
                    chars.as_bytes()[i],
                    chars.as_bytes()[j]
                );
            }
            assert!(glyphs[i].iter().all(|&r| r < 32), "row wider than 5 bits");
        }
    }

    #[test]
    fn drawing_sets_the_glyph_pixels_and_clips_at_the_edges() {
        let mut img = RgbImage::new(12, 7);
        draw_text(&mut img, 0, 0, "1", 1, Rgb([255, 0, 0]));
        // '1' row 0 is 0x04: only column 2 set.
        let row0: Vec<u8> = (0..5).map(|x| img.get_pixel(x, 0)[0]).collect();
        assert_eq!(row0, [0, 0, 255, 0, 0]);
        assert_eq!(text_width("12", 1), 11);
        draw_text(&mut img, 10, -3, "8", 2, Rgb([0, 255, 0])); // mostly outside: no panic
    }
}
