//! Error text for people: candle's errors without the backtraces it attaches.

use std::fmt;

/// A candle error as its message alone. With `RUST_BACKTRACE` set, candle attaches a backtrace to
/// every error it makes, and its message then runs to dozens of lines of frames (of no use from
/// a stripped binary), in the terminal and in a failed run's record.
#[derive(Debug)]
pub struct Plain<'a>(pub &'a candle_core::Error);

impl fmt::Display for Plain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use candle_core::Error as E;
        match self.0 {
            E::WithBacktrace { inner, .. } => Plain(inner).fmt(f),
            E::Context { inner, context } => write!(f, "{context}\n{}", Plain(inner)),
            E::WithPath { inner, path } => write!(f, "path: {path:?} {}", Plain(inner)),
            e => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Plain;
    use candle_core::Error;

    #[test]
    fn a_backtrace_is_left_out_at_any_depth_and_the_rest_of_the_message_kept() {
        let traced = |e: Error| Error::WithBacktrace {
            inner: Box::new(e),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let e = traced(traced(Error::Msg("shape mismatch".into())).context("in block 3").with_path("w.st"));
        assert!(e.to_string().lines().count() > 3, "the test needs a message with frames: {e}");
        assert_eq!(Plain(&e).to_string(), "path: \"w.st\" in block 3\nshape mismatch");
    }
}
