package workload

import (
	"fmt"
	"io/fs"
	"net"
	"os/user"
	"strconv"

	"github.com/tether-mesh/tether/internal/unixsock"
)

// DefaultSocketMode is the mode of the Workload API socket unless told
// otherwise: only the sidecar's own user may connect.
const DefaultSocketMode fs.FileMode = 0o600

var (
	// ErrNotSocket means something other than a unix socket is at the socket
	// path; Listen leaves it alone.
	ErrNotSocket = unixsock.ErrNotSocket
	// ErrInUse means another server is listening on the socket.
	ErrInUse = unixsock.ErrInUse
)

// Access says who may connect to the Workload API socket, which hands out
// the sidecar's private key.
type Access struct {
	// Mode is 0600 (only the sidecar's user; the default when zero), 0660
	// (also the members of Group) or 0666 (whoever reaches the directory:
	// only for a directory that is itself the boundary, such as a pod's
	// emptyDir, which only that pod's containers mount).
	Mode fs.FileMode
	// Group owns the socket when Mode is 0660: a group name or a numeric
	// GID. Empty means the sidecar's own group.
	Group string
}

// ParseAccess parses the --workload-socket-mode and --workload-socket-group
// flags.
func ParseAccess(mode, group string) (Access, error) {
	m, err := strconv.ParseUint(mode, 8, 32)
	if err != nil {
		return Access{}, fmt.Errorf("socket mode %q: want an octal mode, 0600, 0660 or 0666", mode)
	}
	a := Access{Mode: fs.FileMode(m), Group: group}
	if _, _, err := a.resolve(); err != nil {
		return Access{}, err
	}
	return a, nil
}

// resolve returns the socket's mode and group (-1: the process's own).
func (a Access) resolve() (fs.FileMode, int, error) {
	mode := a.Mode
	if mode == 0 {
		mode = DefaultSocketMode
	}
	switch mode {
	case 0o600, 0o666:
		if a.Group != "" {
			return 0, 0, fmt.Errorf("socket group %q needs socket mode 0660, not %04o", a.Group, mode)
		}
		return mode, -1, nil
	case 0o660:
		if a.Group == "" {
			return mode, -1, nil
		}
		if gid, err := strconv.Atoi(a.Group); err == nil && gid >= 0 {
			return mode, gid, nil
		}
		g, err := user.LookupGroup(a.Group)
		if err != nil {
			return 0, 0, fmt.Errorf("socket group: %w", err)
		}
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			return 0, 0, fmt.Errorf("socket group %q has GID %q", a.Group, g.Gid)
		}
		return mode, gid, nil
	default:
		return 0, 0, fmt.Errorf("socket mode %04o: want 0600 (the sidecar's user), 0660 (and a group) or 0666 (a pod's emptyDir)", mode)
	}
}

// Listen listens on a unix socket at path for the Workload API. It creates
// the parent directory (0755) if needed, replaces a stale socket file left
// by an earlier sidecar, refuses to touch anything else at path (a regular
// file or a directory: ErrNotSocket) or a socket another server still
// answers on (ErrInUse). The socket has access's mode and group from the
// moment it can be reached (see package unixsock), never a wider one.
// Closing the listener removes the socket file.
func Listen(path string, access Access) (net.Listener, error) {
	mode, gid, err := access.resolve()
	if err != nil {
		return nil, fmt.Errorf("listen Workload API: %w", err)
	}
	l, err := unixsock.Listen(path, mode, gid, 0o755)
	if err != nil {
		return nil, fmt.Errorf("listen Workload API: %w", err)
	}
	return l, nil
}
