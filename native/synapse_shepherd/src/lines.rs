//! Splitting a worker's output stream into line frames.
//!
//! Output arrives in arbitrary chunks from a pipe; the BEAM wants one frame
//! per line (logging, readiness detection), but must never be handed an
//! unbounded binary, so long lines are cut into pieces of at most
//! [`MAX_LINE_CHUNK`](crate::protocol::MAX_LINE_CHUNK) bytes.

use crate::protocol::MAX_LINE_CHUNK;

/// One piece of a line, ready to become an "O"/"E" frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The bytes, without line terminator.
    pub bytes: Vec<u8>,
    /// Whether this piece begins a line (false for the continuation pieces
    /// of a split long line), so readiness is only recognised at line start.
    pub line_start: bool,
}

/// Incremental line splitter; feed it with [`push`](Self::push), then call
/// [`finish`](Self::finish) at end of stream.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline, so that a long line
    /// arriving in small reads is not rescanned from the start every time.
    scanned: usize,
    /// Whether the current (unfinished) line has already produced a piece.
    in_line: bool,
}

impl LineSplitter {
    /// Creates an empty splitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `data` and returns every piece that is now complete.
    pub fn push(&mut self, data: &[u8]) -> Vec<Piece> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let search_from = self.scanned.max(start);
            match self.buf[search_from..].iter().position(|&b| b == b'\n') {
                Some(offset) => {
                    let end = search_from + offset;
                    self.emit_line(start, end, &mut out);
                    start = end + 1;
                    self.scanned = start;
                }
                None => {
                    // Hold back one extra byte: it may be the '\r' of a
                    // "\r\n" whose '\n' has not arrived yet, and must not end
                    // up in a piece that is already sent.
                    while self.buf.len() - start > MAX_LINE_CHUNK + 1 {
                        out.push(self.piece(start, start + MAX_LINE_CHUNK));
                        start += MAX_LINE_CHUNK;
                    }
                    self.scanned = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..start);
        self.scanned -= start;
        out
    }

    /// Returns the final, unterminated line, if any.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            let end = self.buf.len();
            self.emit_line(0, end, &mut out);
        }
        self.buf.clear();
        self.scanned = 0;
        self.in_line = false;
        out
    }

    /// Emits `buf[start..end]` as the (rest of the) current line.
    fn emit_line(&mut self, start: usize, mut end: usize, out: &mut Vec<Piece>) {
        if end > start && self.buf[end - 1] == b'\r' {
            end -= 1;
        }
        if start == end && self.in_line {
            // The line was already sent in full chunks; an empty tail would
            // be a spurious extra line.
            self.in_line = false;
            return;
        }
        let mut pos = start;
        loop {
            let chunk_end = end.min(pos + MAX_LINE_CHUNK);
            out.push(self.piece(pos, chunk_end));
            pos = chunk_end;
            if pos >= end {
                break;
            }
        }
        self.in_line = false;
    }

    fn piece(&mut self, start: usize, end: usize) -> Piece {
        let piece = Piece {
            bytes: self.buf[start..end].to_vec(),
            line_start: !self.in_line,
        };
        self.in_line = true;
        piece
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(pieces: &[Piece]) -> Vec<&[u8]> {
        pieces.iter().map(|p| p.bytes.as_slice()).collect()
    }

    #[test]
    fn splits_lines_and_strips_crlf() {
        let mut s = LineSplitter::new();
        let pieces = s.push(b"one\ntwo\r\n\nthr");
        assert_eq!(texts(&pieces), vec![&b"one"[..], b"two", b""]);
        assert!(pieces.iter().all(|p| p.line_start));
        assert_eq!(texts(&s.push(b"ee\n")), vec![&b"three"[..]]);
        assert!(s.finish().is_empty());
    }

    #[test]
    fn final_unterminated_line_is_returned_by_finish() {
        let mut s = LineSplitter::new();
        assert_eq!(texts(&s.push(b"a\nlast")), vec![&b"a"[..]]);
        assert_eq!(texts(&s.finish()), vec![&b"last"[..]]);
        assert!(s.finish().is_empty());
    }

    #[test]
    fn crlf_split_across_reads_is_stripped() {
        let mut s = LineSplitter::new();
        assert!(s.push(b"abc\r").is_empty());
        assert_eq!(texts(&s.push(b"\n")), vec![&b"abc"[..]]);
    }

    #[test]
    fn long_lines_are_split_into_64k_pieces() {
        let mut s = LineSplitter::new();
        let mut data = vec![b'a'; MAX_LINE_CHUNK * 2 + 10];
        data.push(b'\n');
        data.extend_from_slice(b"next\n");
        let pieces = s.push(&data);
        let lens: Vec<usize> = pieces.iter().map(|p| p.bytes.len()).collect();
        assert_eq!(lens, vec![MAX_LINE_CHUNK, MAX_LINE_CHUNK, 10, 4]);
        let starts: Vec<bool> = pieces.iter().map(|p| p.line_start).collect();
        assert_eq!(starts, vec![true, false, false, true]);
    }

    #[test]
    fn long_lines_fed_byte_by_byte_are_split_the_same_way() {
        let mut s = LineSplitter::new();
        let mut pieces = Vec::new();
        for _ in 0..MAX_LINE_CHUNK * 2 + 3 {
            pieces.extend(s.push(b"x"));
        }
        pieces.extend(s.push(b"\r\n"));
        let lens: Vec<usize> = pieces.iter().map(|p| p.bytes.len()).collect();
        assert_eq!(lens, vec![MAX_LINE_CHUNK, MAX_LINE_CHUNK, 3]);
        assert!(pieces.iter().all(|p| p.bytes.iter().all(|&b| b == b'x')));
    }

    #[test]
    fn exact_multiple_of_chunk_size_has_no_empty_tail() {
        for terminator in [&b"\n"[..], b"\r\n"] {
            let mut s = LineSplitter::new();
            let mut data = vec![b'b'; MAX_LINE_CHUNK * 2];
            data.extend_from_slice(terminator);
            data.extend_from_slice(b"after\n");
            let mut pieces = Vec::new();
            // Feed in awkward chunk sizes to exercise the hold-back logic.
            for chunk in data.chunks(4099) {
                pieces.extend(s.push(chunk));
            }
            let lens: Vec<usize> = pieces.iter().map(|p| p.bytes.len()).collect();
            assert_eq!(lens, vec![MAX_LINE_CHUNK, MAX_LINE_CHUNK, 5]);
            assert!(pieces[2].line_start);
        }
    }

    #[test]
    fn long_unterminated_final_line_is_split_by_finish() {
        let mut s = LineSplitter::new();
        let mut pieces = s.push(&vec![b'c'; MAX_LINE_CHUNK + 1]);
        pieces.extend(s.finish());
        let lens: Vec<usize> = pieces.iter().map(|p| p.bytes.len()).collect();
        assert_eq!(lens, vec![MAX_LINE_CHUNK, 1]);
    }
}
