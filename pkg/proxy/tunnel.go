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
	// dataChunk is the most application data put in one DATA frame.
	dataChunk = 32 << 10
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
	// NotAfter of its SVID, after which no new stream is started.
	peer       spiffeid.ID
	peerExpiry time.Time
	idleSince  time.Time
}

func newTunnel(c *tls.Conn, peer spiffeid.ID, expiry time.Time) *tunnel {
	return &tunnel{conn: c, br: bufio.NewReaderSize(c, 64<<10), peer: peer, peerExpiry: expiry}
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
func isTimeout(err error) bool              { var ne net.Error; return errors.As(err, &ne) && ne.Timeout() }
func deadline(idle time.Duration) time.Time { return time.Now().Add(idle) }

// relay carries one stream between the local connection c and the tunnel
// until both directions have ended. It returns the bytes sent into the
// tunnel and received from it, and whether the tunnel can carry another
// stream.
func (t *tunnel) relay(c net.Conn, idle time.Duration) (sent, received int64, reusable bool) {
	var act activity
	act.touch()
	var broken atomic.Bool
	abort := func() {
		if broken.CompareAndSwap(false, true) {
			t.conn.Close()
			c.Close()
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // c → tunnel
		defer wg.Done()
		bp := chunkPool.Get().(*[]byte)
		defer chunkPool.Put(bp)
		buf := *bp
		for {
			c.SetReadDeadline(deadline(idle))
			n, err := c.Read(buf[hdrLen:])
			if n > 0 {
				act.touch()
				buf[0] = frameData
				binary.BigEndian.PutUint32(buf[1:], uint32(n))
				t.conn.SetWriteDeadline(deadline(idle))
				if werr := t.write(buf[:hdrLen+n]); werr != nil {
					abort()
					return
				}
				sent += int64(n)
			}
			switch {
			case err == nil:
			case errors.Is(err, io.EOF):
				if t.writeFrame(frameEnd, nil) != nil {
					abort()
				}
				return
			case isTimeout(err) && act.idleFor() < idle && !broken.Load():
			default:
				if !broken.Load() {
					t.writeFrame(frameReset, nil)
				}
				abort()
				return
			}
		}
	}()
	// tunnel → c
	ok := func() bool {
		for {
			t.conn.SetReadDeadline(deadline(idle))
			typ, n, err := t.readHeader()
			if err != nil {
				if isTimeout(err) && act.idleFor() < idle && !broken.Load() {
					continue
				}
				return false
			}
			switch typ {
			case frameData:
				act.touch()
				for n > 0 {
					chunk, err := t.br.Peek(min(n, t.br.Size()))
					if len(chunk) == 0 && err != nil {
						if isTimeout(err) && act.idleFor() < idle && !broken.Load() {
							t.conn.SetReadDeadline(deadline(idle))
							continue
						}
						return false
					}
					c.SetWriteDeadline(deadline(idle))
					w, werr := c.Write(chunk)
					t.br.Discard(w)
					n -= w
					received += int64(w)
					if werr != nil {
						t.writeFrame(frameReset, nil)
						return false
					}
					act.touch()
				}
			case frameEnd:
				if cw, ok := c.(closeWriter); ok {
					cw.CloseWrite()
				}
				return true
			default: // RESET, or a frame that has no place in a stream
				return false
			}
		}
	}()
	if !ok {
		abort()
	}
	wg.Wait()
	if broken.Load() {
		return sent, received, false
	}
	t.conn.SetDeadline(time.Time{})
	c.Close()
	return sent, received, true
}
