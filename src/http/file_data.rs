//! The data of a streamed multipart body's file part, taken from the body's pieces as they
//! arrive: slices of them, never copied, up to the delimiter that ends the part. What follows
//! the delimiter is given back for the rest of the body to be parsed as usual.
//!
//! It ends where multer ends a part's data (the first `\r\n--boundary` after the data's
//! start) and fails as multer fails (a body that ends first, or a body that fails), so the
//! two read every body alike.
//!
//! A piece keeps the whole buffer the connection read it into (8 to 64 KiB) for as long as
//! it is held, and a client sending a few bytes at a time would make every one of them keep
//! its own: pieces under [`COPY_BELOW`] bytes are copied together instead, and given on in
//! pieces of about that size.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

/// The delimiter that ends a part: `\r\n--boundary`.
pub fn delimiter(boundary: &str) -> Vec<u8> {
    let mut delimiter = Vec::with_capacity(boundary.len() + 4);
    delimiter.extend_from_slice(b"\r\n--");
    delimiter.extend_from_slice(boundary.as_bytes());
    delimiter
}

/// Pieces of data shorter than this are copied together (the rest are given on as they are).
pub const COPY_BELOW: usize = 32 * 1024;

/// Reads a file part's data from `body`, the first bytes of it already read (`first`).
pub struct FileData<'a, S> {
    /// Short pieces, copied together.
    small: Vec<u8>,
    /// A long piece to give on once `small` has been.
    long: Option<Bytes>,
    body: &'a mut S,
    /// `\r\n--boundary`.
    delimiter: Vec<u8>,
    finder: memchr::memmem::Finder<'static>,
    /// A piece read and not looked at yet.
    next: Option<Bytes>,
    /// The end of the last piece when it may begin the delimiter (shorter than it).
    held: BytesMut,
    /// Once the delimiter is found: the body's bytes after its line break.
    after: Option<Vec<Bytes>>,
}

impl<'a, S, E> FileData<'a, S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(body: &'a mut S, boundary: &str, first: Bytes) -> Self {
        let delimiter = delimiter(boundary);
        let finder = memchr::memmem::Finder::new(&delimiter).into_owned();
        FileData {
            small: Vec::new(),
            long: None,
            body,
            delimiter,
            finder,
            next: Some(first),
            held: BytesMut::new(),
            after: None,
        }
    }

    /// The next piece of the data; `None` once the delimiter is reached.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, multer::Error> {
        if let Some(long) = self.long.take() {
            return Ok(Some(long));
        }
        loop {
            match self.next_piece().await? {
                Some(p) if p.len() >= COPY_BELOW => {
                    if self.small.is_empty() {
                        return Ok(Some(p));
                    }
                    self.long = Some(p);
                    return Ok(Some(self.take_small()));
                }
                Some(p) => {
                    self.small.extend_from_slice(&p);
                    if self.small.len() >= COPY_BELOW {
                        return Ok(Some(self.take_small()));
                    }
                }
                None if self.small.is_empty() => return Ok(None),
                None => return Ok(Some(self.take_small())),
            }
        }
    }

    fn take_small(&mut self) -> Bytes {
        let copied = Bytes::copy_from_slice(&self.small);
        self.small.clear();
        copied
    }

    /// The next piece of the data as the body's pieces hold it.
    async fn next_piece(&mut self) -> Result<Option<Bytes>, multer::Error> {
        let len = self.delimiter.len();
        loop {
            if self.after.is_some() {
                return Ok(None);
            }
            let piece = match self.next.take() {
                Some(p) => p,
                None => match self.body.next().await {
                    Some(Ok(p)) => p,
                    Some(Err(e)) => return Err(multer::Error::StreamReadFailed(e.into())),
                    None => {
                        return Err(multer::Error::IncompleteFieldData {
                            field_name: Some("file".into()),
                        })
                    }
                },
            };
            if piece.is_empty() {
                continue;
            }
            if !self.held.is_empty() {
                // The held bytes begin the delimiter: the piece goes on with it, or they were
                // data after all.
                let at = self.held.len();
                let take = (len - at).min(piece.len());
                if piece[..take] == self.delimiter[at..at + take] {
                    if at + take == len {
                        self.held.clear();
                        self.after = Some(vec![
                            Bytes::copy_from_slice(&self.delimiter[2..]),
                            piece.slice(take..),
                        ]);
                        return Ok(None);
                    }
                    self.held.extend_from_slice(&piece);
                    continue;
                }
                // The delimiter has one carriage return, its first byte, and so had the held
                // bytes: none of them starts it, and the piece is looked at whole.
                self.next = Some(piece);
                return Ok(Some(self.held.split().freeze()));
            }
            if let Some(i) = self.finder.find(&piece) {
                self.after = Some(vec![piece.slice(i + 2..)]);
                return Ok((i > 0).then(|| piece.slice(..i)));
            }
            // The piece's end may begin the delimiter: it is held until the next piece tells.
            let from = piece.len().saturating_sub(len - 1);
            if let Some(r) = memchr::memrchr(b'\r', &piece[from..]) {
                let r = from + r;
                if self.delimiter.starts_with(&piece[r..]) {
                    self.held.extend_from_slice(&piece[r..]);
                    if r == 0 {
                        continue;
                    }
                    return Ok(Some(piece.slice(..r)));
                }
            }
            return Ok(Some(piece));
        }
    }

    /// The body's bytes after the delimiter's line break (they begin with `--boundary`), once
    /// [`FileData::chunk`] has returned `None`.
    pub fn into_rest(self) -> Vec<Bytes> {
        self.after.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data and what follows it, reading `body` (after the file part's head) in pieces of
    /// `size` bytes; or the error.
    async fn scan(body: &[u8], size: usize, first: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
        let first = first.min(body.len());
        let pieces: Vec<Result<Bytes, std::io::Error>> = body[first..]
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut stream = futures_util::stream::iter(pieces);
        let mut data = FileData::new(&mut stream, "XyZ", Bytes::copy_from_slice(&body[..first]));
        let mut got = Vec::new();
        loop {
            match data.chunk().await {
                Ok(Some(c)) => {
                    assert!(!c.is_empty());
                    got.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut rest: Vec<u8> = data.into_rest().concat();
        while let Some(Ok(p)) = stream.next().await {
            rest.extend_from_slice(&p);
        }
        Ok((got, rest))
    }

    /// Short pieces are given on copied together, long ones as they are.
    #[tokio::test]
    async fn short_pieces_are_copied_together() {
        let mut body = vec![b'a'; 100_000];
        body.extend_from_slice(b"\r\n--XyZ--");
        for (size, most) in [(1, 100_000 / COPY_BELOW + 1), (50_000, 3)] {
            let pieces: Vec<Result<Bytes, std::io::Error>> = body
                .chunks(size)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let mut stream = futures_util::stream::iter(pieces);
            let mut data = FileData::new(&mut stream, "XyZ", Bytes::new());
            let (mut chunks, mut total) = (0, 0);
            while let Some(c) = data.chunk().await.unwrap() {
                chunks += 1;
                total += c.len();
            }
            assert_eq!(total, 100_000);
            assert!(chunks <= most, "{size}: {chunks} chunks");
        }
    }

    #[tokio::test]
    async fn the_data_ends_at_the_first_delimiter_however_the_body_is_cut() {
        let bodies: [&[u8]; 9] = [
            b"abc\r\n--XyZ--\r\n",
            b"\r\n--XyZ\r\nnext",
            b"a\r\r\n-\r\n--X\r\n--XyZ--",
            b"\r\n--Xy\r\n--XyZ",
            b"\r\r\r\n\r\n--XyZ\r\n--XyZ--\r\n",
            b"data \r\n--XY \r\n--xyz \r\n--XyZ",
            b"no delimiter at all\r\n--Xy",
            b"\r\n--X",
            b"",
        ];
        for body in bodies {
            let expected = memchr::memmem::find(body, b"\r\n--XyZ")
                .map(|i| (body[..i].to_vec(), body[i + 2..].to_vec()));
            for size in [1, 2, 3, 4, 5, 7, 64] {
                for first in [0, 1, 3, 9, 100] {
                    let got = scan(body, size, first).await;
                    match &expected {
                        Some(e) => assert_eq!(got.as_ref(), Ok(e), "{body:?} {size} {first}"),
                        None => assert!(
                            got.as_ref().is_err_and(|e| e.contains("file")),
                            "{body:?} {size} {first}: {got:?}"
                        ),
                    }
                }
            }
        }
    }
}
