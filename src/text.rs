//! Text from users and the network made safe to show on one line: control characters as
//! visible escapes. The CLI's tables and Slack's one-line alert fields use it (issue #17).

/// `text` with each control character shown as an escape (`\x1b`, `\n`, `\t`, `\r`, `\x7f`,
/// `\u{9b}`). Table cells and alert lines hold what users and the network sent (reasons, names
/// tried at login, targets, audit details): printed raw, an escape sequence would recolour, move
/// or clear the operator's terminal, and a newline would forge a row or a line (issue #17).
pub fn visible(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            '\t' => shown.push_str("\\t"),
            control if control.is_control() => {
                let code = u32::from(control);
                if code < 0x80 {
                    shown.push_str(&format!("\\x{code:02x}"));
                } else {
                    shown.push_str(&format!("\\u{{{code:x}}}"));
                }
            }
            other => shown.push(other),
        }
    }
    shown
}

/// `text` cut to at most `limit` bytes at a character boundary, with `…` when cut.
pub fn cut(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `visible`, but keeping line breaks: for text shown as several lines (SQL in a transcript).
pub fn visible_lines(text: &str) -> String {
    text.split('\n').map(visible).collect::<Vec<_>>().join("\n")
}
