//! Uploads sent to an object store while their body arrives: when the fields before the file
//! part authenticate the request, the part goes to the store (one PUT when its length can be
//! told from the body's, else a multipart upload) beside its temporary file, under the blob
//! key its record will name, so storing the upload costs no second pass over the file. A
//! request refused after all leaves nothing behind: the object is removed when the upload
//! does not keep it.

use async_trait::async_trait;

use crate::form::{FileMirror, Mirror, Params};
use crate::state::AppState;
use crate::storage::StoredObject;

/// Bodies smaller than this (or of no stated length) are sent after they arrive.
pub const MIN_BYTES: u64 = 8 * 1024 * 1024;

/// What a sink holds at most: a part being filled and the parts in flight.
const SINK_BUFFER_BYTES: usize = 3 * crate::storage::s3::SINK_PART_BYTES;

pub struct UploadMirror {
    pub state: AppState,
    pub cloud: String,
    pub authorization: Option<String>,
    pub content_length: u64,
}

impl UploadMirror {
    /// A mirror for an upload request of `content_length` bytes, if the blob store takes
    /// bodies as they arrive and the body is said to be large enough to gain from it.
    pub fn for_request(
        state: &AppState,
        cloud: &str,
        authorization: Option<&str>,
        content_length: Option<u64>,
    ) -> Option<UploadMirror> {
        let content_length = content_length.filter(|n| *n >= MIN_BYTES)?;
        if !state.blobs.streams() {
            return None;
        }
        Some(UploadMirror {
            state: state.clone(),
            cloud: cloud.to_string(),
            authorization: authorization.map(str::to_string),
            content_length,
        })
    }
}

#[async_trait]
impl FileMirror for UploadMirror {
    fn body_length(&self) -> u64 {
        self.content_length
    }

    async fn start(&self, fields_so_far: &Params, file_len: Option<u64>) -> Option<Mirror> {
        let state = &self.state;
        super::access::uploader_before_file(
            state,
            &self.cloud,
            self.authorization.as_deref(),
            fields_so_far,
        )
        .await?;
        open(state, &self.cloud, file_len).await
    }
}

/// A sink sending a new upload's object (of `len` bytes, when known) to the blob store under
/// a key of its own, with its buffers' room taken in the memory budget all requests share;
/// `None` without room (the file is then sent after it arrives, as usual) or when the store
/// takes no objects as they arrive.
pub async fn open(state: &AppState, cloud: &str, len: Option<u64>) -> Option<Mirror> {
    let mut budget = Vec::new();
    state.memory.take(SINK_BUFFER_BYTES, &mut budget).ok()?;
    let version_id = crate::util::random_hex(16);
    let key = crate::storage::new_blob_key(cloud, &version_id);
    match state.blobs.sink(&key, len).await {
        Ok(Some(sink)) => Some(Mirror {
            sink,
            object: StoredObject::new(state.blobs.clone(), cloud, version_id),
            budget,
            streaming: crate::storage::StreamingBody::start(),
        }),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start sending an upload to the store");
            None
        }
    }
}
