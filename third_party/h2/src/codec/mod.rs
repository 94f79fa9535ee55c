mod error;
mod framed_read;
mod framed_write;

pub use self::error::{SendError, UserError};

use self::framed_read::FramedRead;
use self::framed_write::FramedWrite;

use crate::frame::{self, Data, Frame};
use crate::proto::Error;

use bytes::Buf;
use futures_core::Stream;
use futures_sink::Sink;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::length_delimited;

use std::io;

#[derive(Debug)]
pub struct Codec<T, B> {
    inner: FramedRead<FramedWrite<T, B>>,
}

impl<T, B> Codec<T, B>
where
    T: AsyncRead + AsyncWrite + Unpin,
    B: Buf,
{
    /// Returns a new `Codec` with the default max frame size
    #[inline]
    pub fn new(io: T) -> Self {
        Self::with_max_recv_frame_size(io, frame::DEFAULT_MAX_FRAME_SIZE as usize)
    }

    /// Returns a new `Codec` with the given maximum frame size
    pub fn with_max_recv_frame_size(io: T, max_frame_size: usize) -> Self {
        // Wrap with writer
        let framed_write = FramedWrite::new(io);

        // Delimit the frames
        let delimited = length_delimited::Builder::new()
            .big_endian()
            .length_field_length(3)
            .length_adjustment(9)
            .num_skip(0) // Don't skip the header
            .new_read(framed_write);

        let mut inner = FramedRead::new(delimited);

        // Use FramedRead's method since it checks the value is within range.
        inner.set_max_frame_size(max_frame_size);

        Codec { inner }
    }
}

impl<T, B> Codec<T, B> {
    /// Updates the max received frame size.
    ///
    /// The change takes effect the next time a frame is decoded. In other
    /// words, if a frame is currently in process of being decoded with a frame
    /// size greater than `val` but less than the max frame size in effect
    /// before calling this function, then the frame will be allowed.
    #[inline]
    pub fn set_max_recv_frame_size(&mut self, val: usize) {
        self.inner.set_max_frame_size(val)
    }

    /// Returns the current max received frame size setting.
    ///
    /// This is the largest size this codec will accept from the wire. Larger
    /// frames will be rejected.
    #[cfg(feature = "unstable")]
    #[inline]
    pub fn max_recv_frame_size(&self) -> usize {
        self.inner.max_frame_size()
    }

    /// Returns the max frame size that can be sent to the peer.
    pub fn max_send_frame_size(&self) -> usize {
        self.inner.get_ref().max_frame_size()
    }

    /// Set the peer's max frame size.
    pub fn set_max_send_frame_size(&mut self, val: usize) {
        self.framed_write().set_max_frame_size(val)
    }

    /// Set the peer's header table size size.
    pub fn set_send_header_table_size(&mut self, val: usize) {
        self.framed_write().set_header_table_size(val)
    }

    /// Set the decoder header table size size.
    pub fn set_recv_header_table_size(&mut self, val: usize) {
        self.inner.set_header_table_size(val)
    }

    /// Set the max header list size that can be received.
    pub fn set_max_recv_header_list_size(&mut self, val: usize) {
        self.inner.set_max_header_list_size(val);
    }

    /// Get a reference to the inner stream.
    #[cfg(feature = "unstable")]
    pub fn get_ref(&self) -> &T {
        self.inner.get_ref().get_ref()
    }

    /// Get a mutable reference to the inner stream.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut().get_mut()
    }

    /// Takes the data payload value that was fully written to the socket
    pub(crate) fn take_last_data_frame(&mut self) -> Option<Data<B>> {
        self.framed_write().take_last_data_frame()
    }

    fn framed_write(&mut self) -> &mut FramedWrite<T, B> {
        self.inner.get_mut()
    }
}

impl<T, B> Codec<T, B>
where
    T: AsyncWrite + Unpin,
    B: Buf,
{
    /// Returns `Ready` when the codec can buffer a frame
    pub fn poll_ready(&mut self, cx: &mut Context) -> Poll<io::Result<()>> {
        self.framed_write().poll_ready(cx)
    }

    /// Returns whether the codec can buffer a frame without flushing the
    /// underlying I/O object.
    /// weft patch: frees the codec's read, write and HPACK scratch buffers when they hold
    /// nothing (called by the connection when it has no open stream and is waiting).
    pub fn release_idle_buffers(&mut self) {
        self.inner.release_idle_buffers();
        self.framed_write().release_idle_buffer();
    }

    pub(crate) fn has_send_capacity(&mut self) -> bool {
        self.framed_write().has_capacity()
    }

    /// Buffer a frame.
    ///
    /// `poll_ready` must be called first to ensure that a frame may be
    /// accepted.
    ///
    /// TODO: Rename this to avoid conflicts with Sink::buffer
    pub fn buffer(&mut self, item: Frame<B>) -> Result<(), UserError> {
        self.framed_write().buffer(item)
    }

    /// Flush buffered data to the wire
    pub fn flush(&mut self, cx: &mut Context) -> Poll<io::Result<()>> {
        self.framed_write().flush(cx)
    }

    /// Shutdown the send half
    pub fn shutdown(&mut self, cx: &mut Context) -> Poll<io::Result<()>> {
        self.framed_write().shutdown(cx)
    }
}

impl<T, B> Stream for Codec<T, B>
where
    T: AsyncRead + Unpin,
{
    type Item = Result<Frame, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl<T, B> Sink<Frame<B>> for Codec<T, B>
where
    T: AsyncWrite + Unpin,
    B: Buf,
{
    type Error = SendError;

    fn start_send(mut self: Pin<&mut Self>, item: Frame<B>) -> Result<(), Self::Error> {
        Codec::buffer(&mut self, item)?;
        Ok(())
    }
    /// Returns `Ready` when the codec can buffer a frame
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.framed_write().poll_ready(cx).map_err(Into::into)
    }

    /// Flush buffered data to the wire
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.framed_write().flush(cx).map_err(Into::into)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

// TODO: remove (or improve) this
impl<T> From<T> for Codec<T, bytes::Bytes>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn from(src: T) -> Self {
        Self::new(src)
    }
}

/// weft patch: the codec's system calls for many small frames (see `framed_read.rs`'s
/// `poll_next` and `framed_write.rs`'s `CHAIN_THRESHOLD`).
#[cfg(test)]
mod weft_io_tests {
    use super::*;
    use crate::frame::StreamId;
    use bytes::Bytes;
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    /// An I/O object that hands out `input` as fast as it is asked for and records the size
    /// of every read and write call.
    #[derive(Clone, Default)]
    struct Recorder {
        input: Arc<Mutex<Vec<u8>>>,
        reads: Arc<Mutex<Vec<usize>>>,
        writes: Arc<Mutex<Vec<usize>>>,
        /// The first buffer of each vectored write.
        firsts: Arc<Mutex<Vec<usize>>>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let mut input = self.input.lock().unwrap();
            if input.is_empty() {
                return Poll::Pending;
            }
            self.reads.lock().unwrap().push(buf.remaining());
            let n = buf.remaining().min(input.len());
            buf.put_slice(&input[..n]);
            input.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.lock().unwrap().push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let n = bufs.iter().map(|b| b.len()).sum();
            self.writes.lock().unwrap().push(n);
            self.firsts.lock().unwrap().push(bufs.first().map_or(0, |b| b.len()));
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn data_frame(stream: u32, len: usize) -> Vec<u8> {
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, 0, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend(std::iter::repeat(7u8).take(len));
        f
    }

    #[test]
    fn reads_stay_large_after_an_idle_release() {
        let io = Recorder::default();
        let mut codec: Codec<Recorder, Bytes> = Codec::new(io.clone());
        let mut cx = Context::from_waker(Waker::noop());
        io.input.lock().unwrap().extend(data_frame(1, 100));
        let first = Pin::new(&mut codec).poll_next(&mut cx);
        assert!(matches!(first, Poll::Ready(Some(Ok(Frame::Data(_))))));
        codec.release_idle_buffers();
        // 200 frames of 109 bytes (21.8 KB), all kept by the reader (as a proxy keeps DATA
        // payloads until they are sent on): each full read buffer stays shared with them.
        for _ in 0..200 {
            io.input.lock().unwrap().extend(data_frame(3, 100));
        }
        io.reads.lock().unwrap().clear();
        let mut kept = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut codec).poll_next(&mut cx) {
            kept.push(frame.unwrap());
        }
        assert_eq!(kept.len(), 200);
        let reads = io.reads.lock().unwrap().clone();
        // 8 KiB reads: 3 or 4 of them (at most one per buffer's tail); with exact allocations
        // this took 400 (the 3 length bytes of each frame, then the rest of it).
        assert!(reads.len() <= 8, "{} reads: {:?}", reads.len(), &reads[..reads.len().min(12)]);
    }

    #[test]
    fn small_data_frames_share_one_write() {
        let io = Recorder::default();
        let mut codec: Codec<Recorder, Bytes> = Codec::new(io.clone());
        let mut cx = Context::from_waker(Waker::noop());
        // 20 gRPC messages of 256 bytes (DATA payloads of 261), as a proxy relays them.
        for i in 0..20u32 {
            assert!(codec.poll_ready(&mut cx).is_ready());
            let frame = Data::new(StreamId::from(2 * i + 1), Bytes::from(vec![1u8; 261]));
            codec.buffer(frame.into()).unwrap();
        }
        assert!(codec.flush(&mut cx).is_ready());
        let writes = io.writes.lock().unwrap().clone();
        assert_eq!(writes.iter().sum::<usize>(), 20 * 270);
        // With the upstream threshold (256) each frame was a write of its own: 20.
        assert!(writes.len() <= 2, "{} writes: {writes:?}", writes.len());
        // 10 responses of 1 KiB.
        io.writes.lock().unwrap().clear();
        for i in 0..10u32 {
            assert!(codec.poll_ready(&mut cx).is_ready());
            let frame = Data::new(StreamId::from(2 * i + 1), Bytes::from(vec![1u8; 1024]));
            codec.buffer(frame.into()).unwrap();
        }
        assert!(codec.flush(&mut cx).is_ready());
        let writes = io.writes.lock().unwrap().clone();
        assert_eq!(writes.iter().sum::<usize>(), 10 * 1033);
        assert!(writes.len() <= 2, "{} writes: {writes:?}", writes.len());
        // A full-size frame is still chained: its head and the first 256 bytes are copied, the
        // rest written from where it is.
        io.writes.lock().unwrap().clear();
        io.firsts.lock().unwrap().clear();
        assert!(codec.poll_ready(&mut cx).is_ready());
        let frame = Data::new(StreamId::from(41), Bytes::from(vec![1u8; 16_384]));
        codec.buffer(frame.into()).unwrap();
        assert!(codec.flush(&mut cx).is_ready());
        assert_eq!(*io.writes.lock().unwrap(), [9 + 16_384]);
        assert_eq!(*io.firsts.lock().unwrap(), [256]);
    }
}
