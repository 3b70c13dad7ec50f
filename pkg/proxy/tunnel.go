package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The tether/1 protocol. A mesh hop is one mTLS connection between two
// sidecars that carries one stream at a time and is reused for the next,
// so that most new connections cost no handshake. Every frame is
//
//	type (1 byte) | payload length (4 bytes, big endian) | payload
//
// A stream is: the client sends OPEN (destination port, name); the server
// authorizes it and answers OK or DENY (reason). After OK both sides send
// DATA frames and one END each (a half-close). When both ENDs have passed,
// the connection is idle and the client may send the next OPEN. RESET
// aborts the stream, and the connection is closed.
const (
	frameOpen  byte = 1
	frameOK    byte = 2
	frameDeny  byte = 3
	frameData  byte = 4
	frameEnd   byte = 5
	frameReset byte = 6

	hdrLen = 5
	// maxPayload bounds any frame a peer may send.
	maxPayload = 1 << 20
	// maxControl bounds OPEN and DENY payloads.
	maxControl = 1024
	// dataChunk is the most application data put in one DATA frame: with
	// its header it fills one TLS record (16 KiB of plaintext) exactly.
	dataChunk = 16<<10 - hdrLen
)

var (
	errProtocol = errors.New("tether/1 protocol error")
	errReset    = errors.New("stream reset by peer")
)

var chunkPool = sync.Pool{New: func() any { b := make([]byte, hdrLen+dataChunk); return &b }}

// tunnel is one mTLS connection speaking tether/1.
type tunnel struct {
	conn *tls.Conn
	br   *bufio.Reader
	wmu  sync.Mutex
	// peer is the verified SPIFFE ID at the other end; peerExpiry the
	// NotAfter of its SVID (on the client side, of ours if that is
	// earlier), after which no new stream is started.
	peer       spiffeid.ID
	peerExpiry time.Time
	idleSince  time.Time
	// anchors are the bundle roots the peer's chain and (on the client
	// side) our own chain ended at when the tunnel was made; see anchor.go.
	anchors []anchor
}

func newTunnel(c *tls.Conn, peer spiffeid.ID, expiry time.Time) *tunnel {
	// A small read buffer: headers come through it, and payloads larger
	// than it are read straight into the relay's buffer.
	return &tunnel{conn: c, br: bufio.NewReaderSize(c, 4<<10), peer: peer, peerExpiry: expiry}
}

// writeFrame writes a small frame in one Write.
func (t *tunnel) writeFrame(typ byte, payload []byte) error {
	b := make([]byte, hdrLen+len(payload))
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	copy(b[hdrLen:], payload)
	return t.write(b)
}

func (t *tunnel) write(b []byte) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	_, err := t.conn.Write(b)
	return err
}

// readHeader reads a frame header.
func (t *tunnel) readHeader() (byte, int, error) {
	h, err := t.br.Peek(hdrLen)
	if err != nil {
		return 0, 0, err
	}
	typ, n := h[0], binary.BigEndian.Uint32(h[1:])
	t.br.Discard(hdrLen)
	if n > maxPayload || typ < frameOpen || typ > frameReset {
		return 0, 0, fmt.Errorf("%w: frame type %d, length %d", errProtocol, typ, n)
	}
	return typ, int(n), nil
}

// readControl reads the payload of a control frame.
func (t *tunnel) readControl(n int) ([]byte, error) {
	if n > maxControl {
		return nil, fmt.Errorf("%w: control frame of %d bytes", errProtocol, n)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(t.br, b)
	return b, err
}

// openPayload encodes OPEN: port (2 bytes) then the destination name.
func openPayload(port uint16, name string) []byte {
	if len(name) > maxControl-2 {
		name = name[:maxControl-2]
	}
	b := make([]byte, 2+len(name))
	binary.BigEndian.PutUint16(b, port)
	copy(b[2:], name)
	return b
}

// parseOpen decodes an OPEN payload.
func parseOpen(b []byte) (uint16, string, error) {
	if len(b) < 2 {
		return 0, "", fmt.Errorf("%w: OPEN of %d bytes", errProtocol, len(b))
	}
	return binary.BigEndian.Uint16(b), string(b[2:]), nil
}

// activity is the last time bytes moved on a stream, either way.
type activity struct{ last atomic.Int64 }

func (a *activity) touch() { a.last.Store(time.Now().UnixNano()) }
func (a *activity) idleFor() time.Duration {
	return time.Duration(time.Now().UnixNano() - a.last.Load())
}
func isTimeout(err error) bool { var ne net.Error; return errors.As(err, &ne) && ne.Timeout() }

// lazyDeadline re-arms a connection deadline only when less than half of
// the idle period is left, instead of on every read or write.
type lazyDeadline struct {
	at  time.Time
	set func(time.Time) error
}

func (d *lazyDeadline) arm(idle time.Duration) {
	now := time.Now()
	if d.at.Sub(now) < idle/2 {
		d.at = now.Add(idle)
		d.set(d.at)
	}
}

// relay carries one stream between the local connection c and the tunnel.
//
// Each side ends its direction with exactly one terminator frame: END (a
// clean half-close) or RESET (its local connection failed or was reset).
// A side that receives RESET resets its local connection, so it stops
// sending too and ends with RESET itself; a side that sent RESET drops
// whatever DATA still arrives. The stream is over when a side has sent its
// terminator and received the peer's; the tunnel then carries the next
// stream, even after a reset. Only a failure of the tunnel itself closes it.
//
// It returns the bytes sent into the tunnel and received from it, whether
// the stream was reset, and whether the tunnel can carry another stream.
func (t *tunnel) relay(c net.Conn, idle time.Duration) (sent, received int64, aborted, reusable bool) {
	var act activity
	act.touch()
	var broken, peerReset atomic.Bool
	fail := func() { // the tunnel itself failed
		if broken.CompareAndSwap(false, true) {
			t.conn.Close()
			c.Close()
		}
	}
	// term guards the choice of this side's terminator: the reader may ask
	// for RESET (abort) until the writer has sent one.
	var term struct {
		sync.Mutex
		sent, abort, reset bool
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // c → tunnel
		defer wg.Done()
		bp := chunkPool.Get().(*[]byte)
		defer chunkPool.Put(bp)
		buf := *bp
		rd := lazyDeadline{set: c.SetReadDeadline}
		wd := lazyDeadline{set: t.conn.SetWriteDeadline}
		for {
			rd.arm(idle)
			n, err := c.Read(buf[hdrLen:])
			if n > 0 && !peerReset.Load() {
				act.touch()
				buf[0] = frameData
				binary.BigEndian.PutUint32(buf[1:], uint32(n))
				wd.arm(idle)
				if t.write(buf[:hdrLen+n]) != nil {
					fail()
					return
				}
				sent += int64(n)
			}
			if err == nil {
				continue
			}
			if isTimeout(err) && act.idleFor() < idle && !broken.Load() && !peerReset.Load() {
				continue
			}
			term.Lock()
			frame := frameEnd
			if !errors.Is(err, io.EOF) || peerReset.Load() || term.abort {
				frame, term.reset = frameReset, true
			}
			wd.arm(idle)
			if t.writeFrame(frame, nil) != nil {
				fail()
			}
			term.sent = true
			term.Unlock()
			return
		}
	}()
	// tunnel → c
	func() {
		bp := chunkPool.Get().(*[]byte)
		defer chunkPool.Put(bp)
		buf := (*bp)[:dataChunk]
		rd := lazyDeadline{set: t.conn.SetReadDeadline}
		wd := lazyDeadline{set: c.SetWriteDeadline}
		discard := false
		// read fills b from the tunnel, waiting out deadlines while the
		// stream is active.
		read := func(b []byte) bool {
			for got := 0; got < len(b); {
				rd.arm(idle)
				k, err := t.br.Read(b[got:])
				got += k
				if err != nil {
					if isTimeout(err) && act.idleFor() < idle && !broken.Load() {
						continue
					}
					return false
				}
			}
			return true
		}
		for {
			rd.arm(idle)
			typ, n, err := t.readHeader()
			if err != nil {
				if isTimeout(err) && act.idleFor() < idle && !broken.Load() {
					continue
				}
				fail()
				return
			}
			switch typ {
			case frameData:
				act.touch()
				for n > 0 {
					m := min(n, len(buf))
					if !read(buf[:m]) {
						fail()
						return
					}
					n -= m
					if discard {
						continue
					}
					wd.arm(idle)
					w, werr := c.Write(buf[:m])
					received += int64(w)
					if werr == nil {
						continue
					}
					// The local side is gone. Our writer must end with RESET
					// so the peer stops sending; if it already sent END, the
					// protocol has no way left to say so: drop the tunnel.
					term.Lock()
					if term.sent {
						term.Unlock()
						fail()
						return
					}
					term.abort = true
					term.Unlock()
					discard = true
					reset(c)
				}
			case frameEnd:
				if cw, ok := c.(closeWriter); ok && !discard {
					cw.CloseWrite()
				}
				return
			case frameReset:
				peerReset.Store(true)
				reset(c)
				return
			default:
				fail()
				return
			}
		}
	}()
	wg.Wait()
	if broken.Load() {
		return sent, received, true, false
	}
	t.conn.SetDeadline(time.Time{})
	if !peerReset.Load() && !term.reset {
		c.Close()
	}
	return sent, received, peerReset.Load() || term.reset, true
}
