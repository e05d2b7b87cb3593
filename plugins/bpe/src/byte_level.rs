//! GPT-2's reversible map between bytes and printable characters.
//!
//! Byte-level vocabularies spell every token with one character per byte, so
//! that no token holds whitespace or a control character: the printable bytes
//! `!`..=`~`, `¡`..=`¬` and `®`..=`ÿ` stand for themselves, and the other 68
//! bytes, in order, for U+0100 onwards (a space is `Ġ`, a newline `Ċ`).

/// The character that spells each byte.
pub const BYTE_CHARS: [char; 256] = byte_chars();

/// The last character [`BYTE_CHARS`] uses.
const LAST_CHAR: usize = 0x100 + 67;

/// The byte each character of [`BYTE_CHARS`] spells, indexed by code point.
const CHAR_BYTES: [Option<u8>; LAST_CHAR + 1] = char_bytes();

/// The byte that `c` spells, or `None` for a character outside the map.
pub fn byte_of(c: char) -> Option<u8> {
    CHAR_BYTES.get(c as usize).copied().flatten()
}

/// The bytes a token spells. A token with a character outside the map (an
/// added token such as `<|im_start|>` is usually inside it, but need not be)
/// stands for its own UTF-8 text, as in `tokenizers`' `ByteLevel` decoder.
pub fn token_bytes(token: &str) -> Vec<u8> {
    token
        .chars()
        .map(byte_of)
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

const fn is_printable(byte: usize) -> bool {
    matches!(byte, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

const fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0;
    let mut byte = 0;
    while byte < 256 {
        let code = if is_printable(byte) {
            byte as u32
        } else {
            shifted += 1;
            0x100 + shifted - 1
        };
        // Every code here is below 0x144, so always a valid char.
        table[byte] = match char::from_u32(code) {
            Some(c) => c,
            None => '\u{FFFD}',
        };
        byte += 1;
    }
    table
}

const fn char_bytes() -> [Option<u8>; LAST_CHAR + 1] {
    let mut table = [None; LAST_CHAR + 1];
    let mut byte = 0;
    while byte < 256 {
        let code = BYTE_CHARS[byte] as usize;
        if code <= LAST_CHAR {
            table[code] = Some(byte as u8);
        }
        byte += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::{BYTE_CHARS, byte_of, token_bytes};

    #[test]
    fn matches_gpt2_for_known_bytes() {
        assert_eq!(BYTE_CHARS[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_CHARS[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_CHARS[b'a' as usize], 'a');
        assert_eq!(BYTE_CHARS[0], 'Ā');
        assert_eq!(BYTE_CHARS[0xA0], 'ł');
        assert_eq!(BYTE_CHARS[0xAD], 'Ń');
        assert_eq!(BYTE_CHARS[0xFF], 'ÿ');
    }

    #[test]
    fn every_byte_round_trips() {
        for byte in 0..=255u8 {
            assert_eq!(byte_of(BYTE_CHARS[byte as usize]), Some(byte));
        }
        let mut chars = BYTE_CHARS.to_vec();
        chars.sort_unstable();
        chars.dedup();
        assert_eq!(chars.len(), 256);
    }

    #[test]
    fn tokens_outside_the_map_are_their_own_text() {
        assert_eq!(token_bytes("ĠhÃ©"), b" h\xc3\xa9");
        assert_eq!(token_bytes("<|im_end|>"), b"<|im_end|>");
        assert_eq!(token_bytes("a b"), b"a b");
        assert_eq!(token_bytes("東"), "東".as_bytes());
    }
}
