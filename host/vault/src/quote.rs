//! What an error may quote of its input: a value, a name, a decoder's
//! message, a caught panic's text. Every part of the crate cuts its quotes
//! here, so no error carries more than a few hundred bytes of input.

/// Most bytes of input an error quotes: a value, a column name, a list of
/// names. Longer ones are cut on a character boundary and end in `…`.
pub(crate) const ECHO_BYTES: usize = 100;
/// Most bytes of a decoder's message an error quotes: it may quote input.
const MESSAGE_BYTES: usize = 200;
/// Most bytes of an error's detail, quotes included.
pub(crate) const DETAIL_BYTES: usize = 512;

/// `value` as an error may quote it: at most [`ECHO_BYTES`] of it, cut on
/// a character boundary and marked with `…` where cut.
pub(crate) fn truncate(value: &str) -> String {
    cut(value, ECHO_BYTES)
}

/// A decoder's error message, cut like a quote (it may quote the input).
pub(crate) fn message(error: &dyn std::fmt::Display) -> String {
    cut(&error.to_string(), MESSAGE_BYTES)
}

/// At most `bytes` bytes of `value` (on a character boundary), then `…` if
/// any were left out.
pub(crate) fn cut(value: &str, bytes: usize) -> String {
    if value.len() <= bytes {
        return value.to_owned();
    }
    format!("{}…", &value[..value.floor_char_boundary(bytes)])
}

/// What a caught panic said, if it said it as text.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message")
}
