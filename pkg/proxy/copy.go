package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// closeWriter is a connection that can half-close (TCP, TLS).
type closeWriter interface{ CloseWrite() error }

// pipe copies both ways between a and b until both directions end or one
// is idle for longer than idle (0: no limit). It returns the bytes copied
// a→b and b→a. Each direction half-closes its destination at EOF, so
// protocols that shut down one side first keep working.
func pipe(a, b net.Conn, idle time.Duration) (ab, ba int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ba = copyHalf(a, b, idle)
	}()
	ab = copyHalf(b, a, idle)
	wg.Wait()
	return ab, ba
}

// copyHalf copies src to dst. On EOF it half-closes dst; on any other end
// it closes both so the other direction stops too.
func copyHalf(dst, src net.Conn, idle time.Duration) int64 {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n int64
	var err error
	for {
		if idle > 0 {
			src.SetReadDeadline(time.Now().Add(idle))
		}
		var nr int
		nr, err = src.Read(buf)
		if nr > 0 {
			if idle > 0 {
				dst.SetWriteDeadline(time.Now().Add(idle))
			}
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				err = werr
				break
			}
		}
		if err != nil {
			break
		}
	}
	if errors.Is(err, io.EOF) {
		if cw, ok := dst.(closeWriter); ok {
			cw.CloseWrite()
			return n
		}
	}
	dst.Close()
	src.Close()
	return n
}
