//! `multipart/form-data` bodies (RFC 7578), for the simple case a login form needs: text fields
//! by name. Parts that carry a `filename` (file uploads) are skipped. The body has already been
//! read within the request size limit, so this parses a slice and allocates only the values.

/// The boundary parameter of a `multipart/form-data` content type, if that is the type.
pub fn boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let media = params.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"'))
            .filter(|b| !b.is_empty() && b.len() <= 70)
    })
}

/// Why a multipart body was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultipartError {
    /// No opening or closing boundary line.
    Framing,
    /// A part without a blank line after its headers, or without a `form-data` name.
    Part,
    /// A text field that is not UTF-8.
    Utf8,
}

/// The text fields of a body, in order, as (name, value).
pub fn fields(body: &[u8], boundary: &str) -> Result<Vec<(String, String)>, MultipartError> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The preamble ends at the first delimiter line.
    let start = find(body, delimiter).ok_or(MultipartError::Framing)?;
    let mut rest = &body[start + delimiter.len()..];
    let separator = [b"\r\n", delimiter].concat();
    let mut fields = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(fields); // the close delimiter; the epilogue is ignored
        }
        rest = rest.strip_prefix(b"\r\n").ok_or(MultipartError::Framing)?;
        let end = find(rest, &separator).ok_or(MultipartError::Framing)?;
        let part = &rest[..end];
        rest = &rest[end + separator.len()..];
        let head_end = find(part, b"\r\n\r\n").ok_or(MultipartError::Part)?;
        let (head, value) = (&part[..head_end], &part[head_end + 4..]);
        let head = std::str::from_utf8(head).map_err(|_| MultipartError::Part)?;
        let disposition = head
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-disposition"))
            .map(|(_, value)| value)
            .ok_or(MultipartError::Part)?;
        let (name, is_file) = disposition_name(disposition).ok_or(MultipartError::Part)?;
        if is_file {
            continue;
        }
        let value = String::from_utf8(value.to_vec()).map_err(|_| MultipartError::Utf8)?;
        fields.push((name, value));
    }
}

/// The `name` of a `form-data` disposition, and whether it has a `filename`.
fn disposition_name(value: &str) -> Option<(String, bool)> {
    let mut params = value.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("form-data") {
        return None;
    }
    let mut name = None;
    let mut is_file = false;
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        match key.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(value.replace("%22", "\"")),
            "filename" | "filename*" => is_file = true,
            _ => {}
        }
    }
    Some((name?, is_file))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("multipart/form-data; boundary=abc", Some("abc")),
            ("Multipart/Form-Data;boundary=\"a b\"", Some("a b")),
            ("multipart/form-data; charset=utf-8; BOUNDARY=x", Some("x")),
            ("multipart/form-data", None),
            ("multipart/form-data; boundary=", None),
            ("multipart/mixed; boundary=abc", None),
            ("application/x-www-form-urlencoded", None),
        ];
        for (content_type, want) in cases {
            assert_eq!(boundary(content_type), *want, "{content_type}");
        }
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))),
            None
        );
    }

    #[test]
    fn fields_table() {
        let browser = "preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\na@x\r\n\
                       --XyZ\r\ncontent-disposition: form-data; name=\"password\"\r\ncontent-type: text/plain\r\n\r\np w\r\n--\r\n\
                       --XyZ\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"a.png\"\r\n\r\nPNG...\r\n\
                       --XyZ--\r\nepilogue";
        /// A body, and its fields or the error wanted.
        type Case = (
            &'static str,
            Result<Vec<(&'static str, &'static str)>, MultipartError>,
        );
        let cases: &[Case] = &[
            (
                browser,
                Ok(vec![("username", "a@x"), ("password", "p w\r\n--")]),
            ),
            ("--XyZ--\r\n", Ok(vec![])),
            (
                "--XyZ\r\nContent-Disposition: form-data; name=\"e\"\r\n\r\n\r\n--XyZ--",
                Ok(vec![("e", "")]),
            ),
            ("no delimiter at all", Err(MultipartError::Framing)),
            (
                "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated",
                Err(MultipartError::Framing),
            ),
            (
                "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nno blank line\r\n--XyZ--",
                Err(MultipartError::Part),
            ),
            (
                "--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--",
                Err(MultipartError::Part),
            ),
            (
                "--XyZ\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--XyZ--",
                Err(MultipartError::Part),
            ),
        ];
        for (body, want) in cases {
            let got = fields(body.as_bytes(), "XyZ");
            let got = got.map(|v| v.into_iter().collect::<Vec<_>>());
            let want = match want {
                Ok(v) => Ok(v
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>()),
                Err(e) => Err(e.clone()),
            };
            assert_eq!(got, want, "{body:?}");
        }
        let not_utf8 =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\xff\r\n--XyZ--";
        assert_eq!(fields(not_utf8, "XyZ"), Err(MultipartError::Utf8));
    }
}
