package workload

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"
)

// SocketMode is the mode of the Workload API socket: anyone who can reach
// the directory may connect. The directory is the pod's shared emptyDir, so
// "anyone" means the containers of this pod, whatever their UIDs.
const SocketMode fs.FileMode = 0o666

var (
	// ErrNotSocket means something other than a unix socket is at the socket
	// path; Listen leaves it alone.
	ErrNotSocket = errors.New("not a unix socket")
	// ErrInUse means another server is listening on the socket.
	ErrInUse = errors.New("socket in use")
)

// Listen listens on a unix socket at path for the Workload API. It creates
// the parent directory (0755) if needed, replaces a stale socket file left
// by an earlier sidecar, refuses to touch anything else at path (a regular
// file or a directory: ErrNotSocket) or a socket another server still
// answers on (ErrInUse), and sets the socket's mode to SocketMode. Closing
// the listener removes the socket file.
func Listen(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("listen Workload API: empty socket path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("listen Workload API: create socket directory: %w", err)
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("listen Workload API: %w", err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("listen Workload API: %s is %s, %w; refusing to remove it (move it away or choose another socket path)", path, describe(fi), ErrNotSocket)
	default:
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen Workload API: %s: %w: another process is serving on it", path, ErrInUse)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("listen Workload API: remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen Workload API: %w", err)
	}
	if err := os.Chmod(path, SocketMode); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen Workload API: chmod socket: %w", err)
	}
	return l, nil
}

func describe(fi fs.FileInfo) string {
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
