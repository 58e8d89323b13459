//! How keys and values (arbitrary bytes) are written on the command line's
//! outputs and read back by `import`.
//!
//! - **JSON lines** (`--json`, `export`, `import`): one object per line,
//!   `{"key": K, "value": V}`. A byte string that is valid UTF-8 is a JSON
//!   string; any other is `{"base64": "<standard base64, padded>"}`. `value`
//!   is `null` for a deletion (`watch`, `import`). Every byte string has
//!   exactly one encoding, so export → import round-trips exactly.
//! - **Plain text** (no `--json`): printable characters as they are;
//!   `\\`, `\t`, `\n`, `\r`, other ASCII control bytes as `\xNN`, other
//!   control characters as `\u{NNNN}`, and bytes that are not UTF-8 as
//!   `\xNN`. Meant for reading, not for parsing back.

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::Value;
use std::ffi::OsString;
use std::fmt::Write as _;

/// The JSON form of a byte string.
pub fn to_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => serde_json::json!({ "base64": BASE64.encode(bytes) }),
    }
}

/// The bytes a JSON form stands for (the inverse of [`to_json`]).
pub fn from_json(v: &Value) -> Result<Vec<u8>> {
    match v {
        Value::String(s) => Ok(s.clone().into_bytes()),
        Value::Object(o) if o.len() == 1 => match o.get("base64") {
            Some(Value::String(b)) => BASE64.decode(b).context("invalid base64"),
            _ => bail!("expected a string or {{\"base64\": \"...\"}}"),
        },
        _ => bail!("expected a string or {{\"base64\": \"...\"}}"),
    }
}

/// One JSON line (without the newline): `{"key":…,"value":…}`; a `None`
/// value (a deletion) is `null`.
pub fn json_line(key: &[u8], value: Option<&[u8]>) -> String {
    let value = value.map_or(Value::Null, to_json);
    format!("{{\"key\":{},\"value\":{}}}", to_json(key), value)
}

/// Parses one JSON line: the key and the value (`None`: delete).
pub fn parse_line(line: &str) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let v: Value = serde_json::from_str(line).context("invalid JSON")?;
    let Value::Object(mut o) = v else { bail!("expected an object {{\"key\": …, \"value\": …}}") };
    let key = o.remove("key").ok_or_else(|| anyhow!("missing \"key\""))?;
    let key = from_json(&key).context("bad \"key\"")?;
    let value = match o.remove("value") {
        None => bail!("missing \"value\" (use null to delete)"),
        Some(Value::Null) => None,
        Some(v) => Some(from_json(&v).context("bad \"value\"")?),
    };
    if let Some(extra) = o.keys().next() {
        bail!("unknown field {extra:?}");
    }
    Ok((key, value))
}

/// A byte string made readable on one line (see the module docs).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:04x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A command-line argument as bytes (on Unix, exactly the bytes given).
pub fn arg_bytes(arg: OsString) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        arg.into_vec()
    }
    #[cfg(not(unix))]
    {
        arg.to_string_lossy().into_owned().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_any_bytes() {
        let cases: [&[u8]; 6] =
            [b"", b"plain", "h\u{e9}llo \u{1f600}".as_bytes(), b"\xff\x00\xfe", b"a\"b\\c\n", b"\0"];
        for key in cases {
            for value in cases {
                let line = json_line(key, Some(value));
                assert!(!line.contains('\n'));
                assert_eq!(parse_line(&line).unwrap(), (key.to_vec(), Some(value.to_vec())), "{line}");
            }
            assert_eq!(parse_line(&json_line(key, None)).unwrap(), (key.to_vec(), None));
        }
    }

    #[test]
    fn json_forms() {
        assert_eq!(json_line(b"k", Some(b"v")), r#"{"key":"k","value":"v"}"#);
        assert_eq!(json_line(b"\xff", None), r#"{"key":{"base64":"/w=="},"value":null}"#);
    }

    #[test]
    fn parse_rejects_malformed_lines() {
        for bad in [
            "",
            "[]",
            r#"{"key":"k"}"#,
            r#"{"value":"v"}"#,
            r#"{"key":1,"value":"v"}"#,
            r#"{"key":"k","value":{"base64":"!!"}}"#,
            r#"{"key":"k","value":{"hex":"00"}}"#,
            r#"{"key":"k","value":"v","extra":1}"#,
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn escape_keeps_text_and_escapes_the_rest() {
        assert_eq!(escape("h\u{e9}llo".as_bytes()), "h\u{e9}llo");
        assert_eq!(escape(b"a\tb\nc\\d\x01\xff"), "a\\tb\\nc\\\\d\\x01\\xff");
        assert_eq!(escape("\u{85}".as_bytes()), "\\u{0085}");
    }
}
