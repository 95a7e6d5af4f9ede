//! Where the uploaded bytes come from: a file part, a base64 data URI, or an `http(s)://` URL
//! fetched by the server.

use base64::Engine;
use futures_util::StreamExt;

use crate::error::{ApiError, ApiResult};
use crate::form::FilePart;
use crate::state::AppState;
use crate::storage::temp::blob_from_bytes;
use crate::storage::{BlobWriter, TempBlob, WriteError};

/// The bytes of an upload and the name they came with.
#[derive(Debug)]
pub struct Source {
    pub blob: TempBlob,
    /// The client's file name (multipart filename or the URL's last segment).
    pub filename: Option<String>,
}

/// Resolves the `file` parameter (or file part) into a temporary file.
pub async fn resolve(
    state: &AppState,
    part: Option<FilePart>,
    file_param: Option<&str>,
) -> ApiResult<Source> {
    if let Some(part) = part {
        return Ok(Source {
            blob: part.blob,
            filename: Some(part.filename).filter(|f| !f.is_empty()),
        });
    }
    let value = file_param
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::missing("file"))?;
    let lower = value.get(..12).unwrap_or(value).to_ascii_lowercase();
    if lower.starts_with("data:") {
        let bytes = decode_data_uri(value)?;
        let blob = blob_from_bytes(&state.tmp_dir, bytes, state.limits.max_upload_bytes)
            .await
            .map_err(|e| match e {
                WriteError::TooLarge { limit } => too_large(0, limit),
                WriteError::Io(e) => e.into(),
            })?;
        return Ok(Source {
            blob,
            filename: None,
        });
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return fetch(state, value).await;
    }
    for scheme in ["s3://", "gs://", "ftp://", "ftps://", "sftp://", "file://"] {
        if lower.starts_with(scheme) {
            return Err(ApiError::bad(format!(
                "Unsupported source URL {value}: {} sources are not enabled on this server; \
                 upload the bytes, a data URI or an http(s) URL",
                scheme.trim_end_matches("://")
            )));
        }
    }
    let shown: String = value.chars().take(100).collect();
    Err(ApiError::bad(format!(
        "Invalid file parameter - {shown}: expected a file, a data URI or an http(s) URL"
    )))
}

fn too_large(got: u64, max: u64) -> ApiError {
    if got > 0 {
        ApiError::bad(format!("File size too large. Got {got}. Maximum is {max}."))
    } else {
        ApiError::bad(format!("File size too large. Maximum is {max}."))
    }
}

/// Decodes `data:[<mime>][;k=v]*;base64,<data>` (whitespace in the data is ignored) and the
/// rarer percent-encoded form without `;base64`.
pub fn decode_data_uri(uri: &str) -> ApiResult<Vec<u8>> {
    let invalid = || ApiError::bad("Invalid data URI: expected data:[<mime>][;base64],<data>");
    let rest = uri.get(5..).ok_or_else(invalid)?;
    let (meta, data) = rest.split_once(',').ok_or_else(invalid)?;
    if meta.to_ascii_lowercase().ends_with(";base64") {
        let cleaned: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let engine = base64::engine::general_purpose::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        engine
            .decode(&cleaned)
            .map_err(|e| ApiError::bad(format!("Invalid data URI: bad base64 data ({e})")))
    } else {
        Ok(percent_encoding::percent_decode_str(data).collect())
    }
}

/// The last path segment of a URL, percent-decoded.
fn url_filename(url: &reqwest::Url) -> Option<String> {
    let seg = url.path_segments()?.rfind(|s| !s.is_empty())?;
    let name = percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned();
    (!name.is_empty()).then_some(name)
}

async fn fetch(state: &AppState, url_text: &str) -> ApiResult<Source> {
    let not_found = || ApiError::NotFound(format!("Resource not found - {url_text}"));
    let url = reqwest::Url::parse(url_text).map_err(|_| not_found())?;
    use crate::netpolicy::{check_url, refusal, Purpose};
    check_url(&url, Purpose::Fetch, &state.fetch_allow).map_err(ApiError::bad)?;
    let response = state.http.get(url.clone()).send().await.map_err(|e| {
        // A refusal of the policy (a name resolving to a refused address, a redirect to one)
        // is a clear 400; other failures are the remote's.
        if let Some(why) = refusal(&e) {
            return ApiError::bad(why);
        }
        tracing::info!(url = %url_text, error = %e, "remote file fetch failed");
        not_found()
    })?;
    if !response.status().is_success() {
        tracing::info!(url = %url_text, status = %response.status(), "remote file answered an error");
        return Err(not_found());
    }
    let is_html = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase().starts_with("text/html"))
        .unwrap_or(false);
    if is_html {
        return Err(ApiError::bad(format!(
            "Resource not found - Error in loading {url_text} - HTML response"
        )));
    }
    let max = state
        .limits
        .max_remote_bytes
        .min(state.limits.max_upload_bytes);
    if let Some(len) = response.content_length() {
        if len > max {
            return Err(too_large(len, max));
        }
    }
    let filename = url_filename(response.url()).or_else(|| url_filename(&url));
    let mut writer = BlobWriter::create(&state.tmp_dir, max).await?;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::info!(url = %url_text, error = %e, "remote file transfer failed");
            not_found()
        })?;
        match writer.write(chunk).await {
            Ok(()) => {}
            Err(WriteError::TooLarge { limit }) => return Err(too_large(0, limit)),
            Err(WriteError::Io(e)) => return Err(e.into()),
        }
    }
    let blob = writer.finish().await?;
    Ok(Source { blob, filename })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_uris() {
        assert_eq!(
            decode_data_uri("data:image/png;base64,aGVs\nbG8=").unwrap(),
            b"hello"
        );
        assert_eq!(
            decode_data_uri("data:text/plain;base64,aGVsbG8").unwrap(),
            b"hello"
        );
        assert_eq!(decode_data_uri("data:,a%20b").unwrap(), b"a b");
        assert!(decode_data_uri("data:image/png;base64,@@@").is_err());
        assert!(decode_data_uri("data:nocomma").is_err());
    }
}
