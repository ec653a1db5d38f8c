//! QEMU's stream framing for network frames (net/net.c `net_fill_rstate`): each frame is a
//! 4-byte big-endian length followed by that many bytes. A peer is untrusted: a length
//! larger than QEMU's NET_BUFSIZE ends the connection, as QEMU does, and nothing is
//! allocated from what the peer claims.

/// QEMU's NET_BUFSIZE (4096 + 65536): the largest frame a stream netdev accepts.
pub const MAX_FRAME: usize = 4096 + 65536;

/// The peer announced a frame longer than [`MAX_FRAME`]; the connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("oversized packet received ({0} bytes), connection terminated")]
pub struct Oversized(pub u32);

/// Reassembles frames from arbitrary chunks of a byte stream.
#[derive(Debug)]
pub struct FrameReader {
    header: [u8; 4],
    header_len: usize,
    /// Length of the frame being read, once the header is complete.
    frame_len: Option<usize>,
    buf: Vec<u8>,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    pub fn new() -> Self {
        Self {
            header: [0; 4],
            header_len: 0,
            frame_len: None,
            buf: Vec::new(),
        }
    }

    /// Forget a partial frame (a new connection starts clean).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Feed `data`; every completed frame is passed to `frame`. On an oversized length the
    /// state is reset and the error returned (the caller closes the connection).
    pub fn feed(&mut self, mut data: &[u8], mut frame: impl FnMut(&[u8])) -> Result<(), Oversized> {
        while !data.is_empty() {
            match self.frame_len {
                None => {
                    let n = (4 - self.header_len).min(data.len());
                    self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                    self.header_len += n;
                    data = &data[n..];
                    if self.header_len == 4 {
                        let len = u32::from_be_bytes(self.header);
                        if len as usize > MAX_FRAME {
                            self.reset();
                            return Err(Oversized(len));
                        }
                        self.header_len = 0;
                        self.frame_len = Some(len as usize);
                        self.buf.clear();
                        if len == 0 {
                            self.frame_len = None;
                            frame(&[]);
                        }
                    }
                }
                Some(len) => {
                    let n = (len - self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.buf.len() == len {
                        self.frame_len = None;
                        frame(&self.buf);
                    }
                }
            }
        }
        Ok(())
    }
}

/// `frame` with its 4-byte big-endian length in front, as a stream peer expects it.
pub fn encode(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(reader: &mut FrameReader, data: &[u8]) -> Result<Vec<Vec<u8>>, Oversized> {
        let mut out = Vec::new();
        reader.feed(data, |f| out.push(f.to_vec()))?;
        Ok(out)
    }

    #[test]
    fn frames_split_at_every_byte_reassemble() {
        let mut stream = encode(b"TEST\0");
        stream.extend(encode(b""));
        stream.extend(encode(&[7u8; 1500]));
        let mut reader = FrameReader::new();
        let mut frames = Vec::new();
        for b in &stream {
            frames.extend(collect(&mut reader, std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(
            frames,
            vec![b"TEST\0".to_vec(), Vec::new(), vec![7u8; 1500]]
        );
        // The same bytes in one chunk give the same frames.
        let mut reader = FrameReader::new();
        assert_eq!(collect(&mut reader, &stream).unwrap(), frames);
    }

    #[test]
    fn an_oversized_length_is_refused_without_allocating_it() {
        let mut reader = FrameReader::new();
        let err = collect(&mut reader, &u32::MAX.to_be_bytes()).unwrap_err();
        assert_eq!(err, Oversized(u32::MAX));
        assert!(
            reader.buf.capacity() < MAX_FRAME,
            "nothing allocated for the claim"
        );
        // The largest allowed frame passes; one byte more does not.
        let mut reader = FrameReader::new();
        let frame = vec![1u8; MAX_FRAME];
        assert_eq!(collect(&mut reader, &encode(&frame)).unwrap(), vec![frame]);
        let err = collect(&mut reader, &((MAX_FRAME + 1) as u32).to_be_bytes()).unwrap_err();
        assert_eq!(err, Oversized(MAX_FRAME as u32 + 1));
        // After the error the reader starts over cleanly.
        assert_eq!(
            collect(&mut reader, &encode(b"ok")).unwrap(),
            vec![b"ok".to_vec()]
        );
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let mut reader = FrameReader::new();
        let stream = encode(b"hello");
        assert!(collect(&mut reader, &stream[..3]).unwrap().is_empty());
        assert!(collect(&mut reader, &stream[3..6]).unwrap().is_empty());
        assert_eq!(
            collect(&mut reader, &stream[6..]).unwrap(),
            vec![b"hello".to_vec()]
        );
        reader.feed(&stream[..5], |_| panic!("incomplete")).unwrap();
        reader.reset();
        assert_eq!(
            collect(&mut reader, &stream).unwrap(),
            vec![b"hello".to_vec()]
        );
    }
}
