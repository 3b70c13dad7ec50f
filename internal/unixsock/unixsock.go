// Package unixsock listens on unix sockets whose permissions hold from the
// moment the socket can be reached: a socket file is bound in a private
// directory, given its mode and group there, and only then linked into
// place. Chmod after listen leaves a window in which the socket has the
// umask's mode; this leaves none.
package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

var (
	// ErrNotSocket means something other than a unix socket is at the
	// path; Listen leaves it alone.
	ErrNotSocket = errors.New("not a unix socket")
	// ErrInUse means another server is listening on the socket.
	ErrInUse = errors.New("socket in use")
)

// Listen listens on a unix socket at path with permissions mode, owned by
// group gid (-1: the process's own group). It creates path's directory with
// dirMode if needed, replaces a stale socket file left by a process that
// died, and refuses anything else at path (ErrNotSocket) or a socket
// another process still answers on (ErrInUse). Closing the listener
// removes the socket file.
func Listen(path string, mode fs.FileMode, gid int, dirMode fs.FileMode) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("empty socket path")
	}
	if len(path) > maxPath {
		return nil, fmt.Errorf("socket path %s is %d bytes, longer than the %d a unix socket address holds; choose a shorter path", path, len(path), maxPath)
	}
	if mode&^0o777 != 0 {
		return nil, fmt.Errorf("socket mode %v is not a permission mode", mode)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	removeLeftovers(path)
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("%s is %s, %w; refusing to remove it (move it away or choose another socket path)", path, Describe(fi), ErrNotSocket)
	default:
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: %w: another process is serving on it", path, ErrInUse)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}

	// Bind where no one else can reach (a 0700 directory next to path, so
	// that the link below stays on one file system), set mode and group,
	// then link into place: the socket is never reachable with other
	// permissions.
	private, err := os.MkdirTemp(dir, leftoverPrefix(path))
	if err != nil {
		return nil, fmt.Errorf("create private directory for the socket: %w", err)
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "s")
	l, err := bind(tmp)
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false) // Close removes path, not tmp
	fail := func(what string, err error) (net.Listener, error) {
		l.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail("set socket mode", err)
	}
	if gid >= 0 {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			return fail(fmt.Sprintf("set socket group %d", gid), err)
		}
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fail(path, fmt.Errorf("%w: another process created it meanwhile", ErrInUse))
		}
		return fail("put socket in place", err)
	}
	return &listener{UnixListener: l, path: path}, nil
}

// maxPath is the longest path a unix socket can be bound to (sun_path).
const maxPath = 107

// bind listens on tmp. When tmp is longer than a socket address may be
// (the private directory adds to path), it binds through the directory's
// /proc/self/fd entry, which names the same directory in a few bytes.
func bind(tmp string) (*net.UnixListener, error) {
	name := tmp
	if len(tmp) > maxPath {
		d, err := os.Open(filepath.Dir(tmp))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		name = fmt.Sprintf("/proc/self/fd/%d/%s", d.Fd(), filepath.Base(tmp))
	}
	return net.ListenUnix("unix", &net.UnixAddr{Name: name, Net: "unix"})
}

// listener removes its socket file when closed.
type listener struct {
	*net.UnixListener
	path string
	once sync.Once
}

func (l *listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() { os.Remove(l.path) })
	return err
}

func leftoverPrefix(path string) string { return "." + filepath.Base(path) + ".tmp-" }

// removeLeftovers removes the private directories of a Listen that died
// before it could.
func removeLeftovers(path string) {
	stale, _ := filepath.Glob(filepath.Join(filepath.Dir(path), leftoverPrefix(path)+"*"))
	for _, d := range stale {
		os.RemoveAll(d)
	}
}

// Describe names the kind of file fi is, for error messages.
func Describe(fi fs.FileInfo) string {
	switch t := fi.Mode().Type(); {
	case t == 0:
		return "a regular file"
	case t&fs.ModeDir != 0:
		return "a directory"
	case t&fs.ModeSymlink != 0:
		return "a symbolic link"
	default:
		return "a " + t.String() + " file"
	}
}
