//! Stop strings: generated text is released only once it can no longer
//! turn out to be the start of a stop string, so a stream never shows a
//! client part of one; the text ends where the first stop string begins.

/// Text as it is generated, and how much of it has been released.
pub struct StopText {
    stops: Vec<String>,
    /// The longest stop string, in bytes.
    longest: usize,
    text: String,
    released: usize,
    stopped: bool,
}

impl StopText {
    /// `stops`: non-empty strings that end the text.
    pub fn new(stops: Vec<String>) -> Self {
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            longest,
            text: String::new(),
            released: 0,
            stopped: false,
        }
    }

    /// Adds a piece of generated text. Returns what may be released now,
    /// and whether a stop string has ended the text (then the text stops
    /// before it, and nothing more may be pushed).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        // A stop string completed by this piece starts no earlier than
        // this: the held-back text is shorter than the longest stop string.
        let from = floor_boundary(&self.text, self.released);
        self.text.push_str(piece);
        let found = self
            .stops
            .iter()
            .filter_map(|stop| self.text[from..].find(stop.as_str()).map(|at| from + at))
            .min();
        if let Some(at) = found {
            self.text.truncate(at.max(self.released));
            self.stopped = true;
            return (self.release_to(self.text.len()), true);
        }
        let held = self.held_back();
        (self.release_to(self.text.len() - held), false)
    }

    /// Releases the rest: generation ended without a stop string.
    pub fn finish(&mut self) -> String {
        self.release_to(self.text.len())
    }

    /// Whether a stop string has ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// All the text, up to a stop string if one ended it.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn release_to(&mut self, end: usize) -> String {
        let out = self.text[self.released..end].to_owned();
        self.released = end;
        out
    }

    /// The length of the longest unreleased suffix that begins some stop
    /// string: it may yet become one.
    fn held_back(&self) -> usize {
        let open = &self.text[self.released..];
        let most = open.len().min(self.longest.saturating_sub(1));
        (1..=most)
            .rev()
            .find(|&n| {
                let start = open.len() - n;
                open.is_char_boundary(start)
                    && self.stops.iter().any(|s| s.starts_with(&open[start..]))
            })
            .unwrap_or(0)
    }
}

/// The largest char boundary of `text` at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::StopText;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut text = StopText::new(stops.iter().map(|s| (*s).to_owned()).collect());
        let mut out = Vec::new();
        for piece in pieces {
            let (released, stopped) = text.push(piece);
            out.push(released);
            if stopped {
                return (out, true, text.text().to_owned());
            }
        }
        out.push(text.finish());
        (out, false, text.text().to_owned())
    }

    #[test]
    fn without_stop_strings_every_piece_leaves_at_once() {
        let (out, stopped, text) = run(&[], &["Hel", "lo", "!"]);
        assert_eq!(out, ["Hel", "lo", "!", ""]);
        assert!(!stopped);
        assert_eq!(text, "Hello!");
    }

    #[test]
    fn a_stop_string_split_across_pieces_is_never_shown() {
        let (out, stopped, text) = run(&["\nUser:"], &["Sure", ".\n", "Us", "er:", " more"]);
        assert!(stopped);
        assert_eq!(text, "Sure.");
        assert_eq!(out.concat(), "Sure.");
        // The newline waited: it might have begun the stop string.
        assert_eq!(out[1], ".");
    }

    #[test]
    fn held_back_text_that_does_not_become_a_stop_string_is_released() {
        let (out, stopped, text) = run(&["END"], &["the E", "N", "d of it"]);
        assert!(!stopped);
        assert_eq!(out, ["the ", "", "ENd of it", ""]);
        assert_eq!(text, "the ENd of it");
        let (out, _, _) = run(&["END"], &["ab E"]);
        assert_eq!(out, ["ab ", "E"]);
    }

    #[test]
    fn the_earliest_of_several_stop_strings_ends_the_text() {
        let (_, stopped, text) = run(&["two", "one"], &["zero one two"]);
        assert!(stopped);
        assert_eq!(text, "zero ");
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let (out, stopped, text) = run(&["ü!"], &["grüß", "e ü", "!x"]);
        assert!(stopped);
        assert_eq!(text, "grüße ");
        assert_eq!(out.concat(), "grüße ");
        let (out, stopped, _) = run(&["日本"], &["こんにち日", "は"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "こんにち日は");
    }
}
