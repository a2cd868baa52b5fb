//! Glob patterns with the rules of Redis's `stringmatchlen`.
//!
//! A pattern is compiled once, when a client subscribes to it, into tokens that
//! each match exactly one byte (or, for `*`, any run of bytes). Matching is then
//! the classic single-backtrack wildcard walk: linear in practice and immune to
//! the exponential blow-up that naive recursion suffers on `a*a*a*a*b`.
//!
//! The compilation reproduces Redis's quirks so that a pattern means the same
//! thing on the embedded backend as it does inside Redis:
//! - `\x` matches `x` literally, a trailing lone `\` matches `\`;
//! - `[abc]`, `[^abc]`, ranges `[a-z]` (reversed ranges are swapped), `\` escapes
//!   inside a class, `[]` matches nothing, and an unclosed `[` runs to the end of
//!   the pattern.

/// The length of a pattern's literal prefix: the bytes before its first
/// special character (`*`, `?`, `[`, `\`). Every channel it matches starts
/// with them.
pub fn literal_prefix(pattern: &[u8]) -> usize {
    pattern.iter().position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\')).unwrap_or(pattern.len())
}

/// A compiled glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`: any run of bytes, the empty one included.
    Star,
    /// `?`: exactly one byte.
    Any,
    /// One literal byte.
    Byte(u8),
    /// `[...]`: one byte of the set (a 256-bit map, already negated for `[^...]`).
    Class([u64; 4]),
}

impl Token {
    fn matches(&self, c: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Byte(b) => *b == c,
            Token::Class(set) => set[usize::from(c >> 6)] & (1 << (c & 63)) != 0,
        }
    }
}

impl Glob {
    /// Compiles `pattern`. Every byte string is a valid pattern, as in Redis.
    pub fn new(pattern: &[u8]) -> Glob {
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut i = 0;
        while i < pattern.len() {
            let token = match pattern[i] {
                b'*' => {
                    // Runs of stars mean the same as one star.
                    if tokens.last() == Some(&Token::Star) {
                        i += 1;
                        continue;
                    }
                    Token::Star
                }
                b'?' => Token::Any,
                b'[' => {
                    let (set, end) = compile_class(pattern, i + 1);
                    i = end;
                    Token::Class(set)
                }
                b'\\' if i + 1 < pattern.len() => {
                    i += 1;
                    Token::Byte(pattern[i])
                }
                b => Token::Byte(b),
            };
            tokens.push(token);
            i += 1;
        }
        Glob { tokens }
    }

    /// Whether `subject` (a channel name) matches the pattern.
    pub fn matches(&self, subject: &[u8]) -> bool {
        let tokens = &self.tokens;
        let (mut t, mut s) = (0, 0);
        // Where to resume after the last star: (its token index, subject index).
        let mut backtrack: Option<(usize, usize)> = None;
        while s < subject.len() {
            match tokens.get(t) {
                Some(Token::Star) => {
                    backtrack = Some((t, s));
                    t += 1;
                    continue;
                }
                Some(token) if token.matches(subject[s]) => {
                    t += 1;
                    s += 1;
                    continue;
                }
                _ => {}
            }
            match backtrack {
                Some((star, from)) => {
                    t = star + 1;
                    s = from + 1;
                    backtrack = Some((star, from + 1));
                }
                None => return false,
            }
        }
        tokens[t..].iter().all(|token| *token == Token::Star)
    }
}

/// Compiles the class whose body starts at `start` (just after `[`); returns the
/// byte set and the index of the closing `]` (or the last index of the pattern
/// when the class is not closed), following Redis's loop step by step.
fn compile_class(pattern: &[u8], start: usize) -> ([u64; 4], usize) {
    let mut set = [0u64; 4];
    let mut add = |c: u8| set[usize::from(c >> 6)] |= 1 << (c & 63);
    let mut i = start;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let end = loop {
        let remaining = pattern.len().saturating_sub(i);
        match pattern.get(i) {
            Some(b'\\') if remaining >= 2 => {
                i += 1;
                add(pattern[i]);
            }
            Some(b']') => break i,
            None => break pattern.len() - 1,
            Some(&first) if remaining >= 3 && pattern[i + 1] == b'-' => {
                let (lo, hi) = (first.min(pattern[i + 2]), first.max(pattern[i + 2]));
                (lo..=hi).for_each(&mut add);
                i += 2;
            }
            Some(&c) => add(c),
        }
        i += 1;
    };
    if negate {
        set.iter_mut().for_each(|word| *word = !*word);
    }
    (set, end)
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(pattern: &str, subject: &str) -> bool {
        Glob::new(pattern.as_bytes()).matches(subject.as_bytes())
    }

    #[test]
    fn redis_documented_cases() {
        // The examples of Redis's KEYS and PSUBSCRIBE documentation.
        assert!(m("h?llo", "hello") && m("h?llo", "hallo") && m("h?llo", "hxllo"));
        assert!(m("h*llo", "hllo") && m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hello") && m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && m("h[^e]llo", "hbllo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hallo") && m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(m("news.*", "news.art.figurative") && !m("news.*", "news"));
    }

    #[test]
    fn stars() {
        assert!(m("*", "anything"));
        assert!(m("**", "x") && m("a**b", "ab") && m("a*b*c", "a-b-c"));
        assert!(m("*b", "aaab") && !m("*b", "aaba"));
        assert!(m("a*", "a") && !m("a*", "b"));
        // Pathological for naive recursion; linear here.
        let subject = "a".repeat(200);
        assert!(!m(&format!("{}b", "a*".repeat(40)), &subject));
    }

    #[test]
    fn escapes() {
        assert!(m(r"h\*llo", "h*llo") && !m(r"h\*llo", "hello"));
        assert!(m(r"a\?", "a?") && !m(r"a\?", "ab"));
        assert!(m("a\\", "a\\"), "a trailing backslash is literal");
        assert!(m(r"[\]]", "]") && m(r"[\-a]", "-"));
    }

    #[test]
    fn class_quirks() {
        assert!(m("[z-a]", "m"), "reversed ranges are swapped");
        assert!(!m("x[]", "x]") && !m("[]", "a"), "an empty class matches nothing");
        assert!(m("[^]", "q"));
        assert!(m("[abc", "b") && !m("[abc", "d"), "an unclosed class runs to the end");
        assert!(m("a[b-", "a-") && m("a[b-", "ab"));
    }

    #[test]
    fn bytes_are_bytes() {
        let glob = Glob::new(b"\xff*\x00");
        assert!(glob.matches(b"\xff\x80\x00") && !glob.matches(b"\xfe\x00"));
    }
}
