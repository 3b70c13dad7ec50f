package identity

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Store keeps the CA's state durably.
//
// Load returns ErrNotFound when no state was ever saved. Save is a
// compare-and-swap: it writes only if the stored revision still equals rev
// ("" when creating) and returns ErrConflict otherwise, so several CA
// replicas can share one store. Implementations are safe for concurrent use
// and never leave a half-written state behind.
type Store interface {
	Load(ctx context.Context) (st *State, rev string, err error)
	Save(ctx context.Context, st *State, rev string) (newRev string, err error)
}

// Store errors.
var (
	ErrNotFound = errors.New("no CA state stored yet")
	ErrConflict = errors.New("CA state was changed by someone else")
)

// DiskStore keeps the state in one file in a directory, written atomically
// (temporary file, fsync, rename, fsync of the directory) with mode 0600.
//
// Several processes may share one directory (two tether-ca on one host
// path): Save holds an exclusive flock(2) on LockFile while it compares the
// stored revision and writes, so the compare-and-swap holds across
// processes, not only across goroutines.
type DiskStore struct {
	dir string
	mu  sync.Mutex
}

var _ Store = (*DiskStore)(nil)

// StateFile is the name of the state file inside a DiskStore's directory.
const StateFile = "ca-state.json"

// LockFile is the name of the file a DiskStore locks while it writes.
const LockFile = "ca-state.lock"

// NewDiskStore opens (creating it with mode 0700 if needed) a state directory
// and checks that it can be written.
func NewDiskStore(dir string) (*DiskStore, error) {
	if dir == "" {
		return nil, errors.New("disk store: no directory given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("disk store: %w", err)
	}
	probe, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return nil, fmt.Errorf("disk store: directory %s is not writable: %w", dir, err)
	}
	probe.Close()
	os.Remove(probe.Name())
	// A crash between writing a temporary state file and renaming it
	// leaves the file behind: a whole copy of the state, keys included,
	// that no later retire would erase. Remove such leftovers.
	RemoveAtomicLeftovers(filepath.Join(dir, StateFile))
	return &DiskStore{dir: dir}, nil
}

// Dir is the store's directory.
func (d *DiskStore) Dir() string { return d.dir }

func (d *DiskStore) path() string { return filepath.Join(d.dir, StateFile) }

// Load reads the state. A file that does not parse gives ErrCorruptState and
// is left untouched.
func (d *DiskStore) Load(ctx context.Context) (*State, string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.load()
}

func (d *DiskStore) load() (*State, string, error) {
	data, err := os.ReadFile(d.path())
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", ErrNotFound
	}
	if err != nil {
		return nil, "", fmt.Errorf("disk store: %w", err)
	}
	st, err := DecodeState(data)
	if err != nil {
		return nil, "", fmt.Errorf("disk store %s: %w", d.path(), err)
	}
	return st, revisionOf(data), nil
}

// Save writes st if the file still holds revision rev.
func (d *DiskStore) Save(ctx context.Context, st *State, rev string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	lock, err := d.lockFile(ctx)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	_, cur, err := d.load()
	switch {
	case errors.Is(err, ErrNotFound):
		cur = ""
	case err != nil:
		return "", err
	}
	if cur != rev {
		return "", ErrConflict
	}
	data, err := st.Encode()
	if err != nil {
		return "", fmt.Errorf("disk store: encode: %w", err)
	}
	if err := WriteFileAtomic(d.path(), data, 0o600); err != nil {
		return "", fmt.Errorf("disk store: %w", err)
	}
	return revisionOf(data), nil
}

// lockFile takes the exclusive cross-process lock of the directory, waiting
// for another process's write to finish (or ctx to end). The lock is
// released when the returned file is closed, or when the process dies.
func (d *DiskStore) lockFile(ctx context.Context) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(d.dir, LockFile), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("disk store: open lock file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			f.Close()
			return nil, fmt.Errorf("disk store: lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("disk store: waiting for another process to finish writing %s: %w", d.dir, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// revisionOf names a stored document by its content.
func revisionOf(data []byte) string {
	return Fingerprint(data)[:16]
}

// RemoveAtomicLeftovers removes the temporary files WriteFileAtomic(path,
// ...) leaves behind when the process dies between creating and renaming
// them. Call it at start, before anything writes path.
func RemoveAtomicLeftovers(path string) {
	stale, err := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*"))
	if err != nil {
		return
	}
	for _, f := range stale {
		os.Remove(f)
	}
}

// WriteFileAtomic writes data to path so that a crash at any point leaves
// either the old file or the new one: temporary file in the same directory,
// fsync, rename, fsync of the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	cleanup := func() { f.Close(); os.Remove(tmp) }
	if err := f.Chmod(perm); err != nil {
		cleanup()
		return err
	}
	if _, err := f.Write(data); err != nil {
		cleanup()
		return err
	}
	if err := f.Sync(); err != nil {
		cleanup()
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
