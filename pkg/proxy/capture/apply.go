package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Runner runs one iptables tool. name is iptables-save, iptables-restore,
// ip6tables-save or ip6tables-restore; stdin, when not nil, is fed to it. Run
// returns the tool's standard output. When the tool fails, the error should
// carry what it printed on standard error (Apply reads it to tell a missing
// capability from other failures) and wrap exec.ErrNotFound when the tool is
// not installed. Apply and Cleanup call Run from one goroutine at a time.
type Runner interface {
	Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)
}

// ExecRunner runs the tools found on PATH, in the current network namespace
// unless Start says otherwise. The zero value is ready to use.
type ExecRunner struct {
	// Start, if set, starts each command instead of (*exec.Cmd).Start; tests
	// use it to run the tools inside another network namespace or as another
	// user. Run waits for the command.
	Start func(*exec.Cmd) error
}

var _ Runner = ExecRunner{}

// Run implements Runner.
func (e ExecRunner) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := e.Start
	if start == nil {
		start = (*exec.Cmd).Start
	}
	err := start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return stdout.Bytes(), fmt.Errorf("%s: %w: %s", name, err, msg)
		}
		return stdout.Bytes(), fmt.Errorf("%s: %w", name, err)
	}
	return stdout.Bytes(), nil
}

// Apply installs the rules c describes into the nat table of the current
// network namespace (through r; nil means ExecRunner), replacing whatever an
// earlier Apply installed. It is idempotent. Each family is changed in one
// iptables-restore transaction; with c.IPv6 unset, TETHER rules an earlier
// Apply left in the IPv6 table are removed. Errors wrap ErrInvalidConfig,
// ErrIptablesNotFound or ErrNeedNetAdmin when those are the cause.
func Apply(ctx context.Context, c Config, r Runner) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if r == nil {
		r = ExecRunner{}
	}
	if err := applyFamily(ctx, r, ipv4, tables(c, ipv4)); err != nil {
		return err
	}
	if c.IPv6 {
		return applyFamily(ctx, r, ipv6, tables(c, ipv6))
	}
	return cleanupOptional(ctx, r, ipv6)
}

// emptyTables are the tables with nothing of this package's in them.
func emptyTables() []table {
	var ts []table
	for _, n := range tableNames {
		ts = append(ts, table{name: n})
	}
	return ts
}

// Cleanup removes every TETHER_* chain and every jump into one from the nat
// tables (IPv4, and IPv6 when ip6tables can read its table), leaving all other
// rules alone. Cleaning a clean table does nothing.
func Cleanup(ctx context.Context, r Runner) error {
	if r == nil {
		r = ExecRunner{}
	}
	if err := applyFamily(ctx, r, ipv4, emptyTables()); err != nil {
		return err
	}
	return cleanupOptional(ctx, r, ipv6)
}

// cleanupOptional removes this package's rules from a family that may not be
// usable at all (no ip6tables, no IPv6 nat in the kernel). If its table
// cannot be read, nothing of ours can be in it.
func cleanupOptional(ctx context.Context, r Runner, f family) error {
	var input strings.Builder
	for _, t := range emptyTables() {
		out, err := r.Run(ctx, nil, f.save, "-t", t.name)
		if err != nil {
			continue
		}
		if cur := parseSave(string(out), t.name); !cur.empty() {
			input.WriteString(t.restoreInput(cur))
		}
	}
	if input.Len() == 0 {
		return nil
	}
	return restore(ctx, r, f, input.String())
}

// applyFamily makes f's tables hold exactly ts of this package's rules, in
// one iptables-restore run (each table is one transaction).
func applyFamily(ctx context.Context, r Runner, f family, ts []table) error {
	var input strings.Builder
	for _, t := range ts {
		out, err := r.Run(ctx, nil, f.save, "-t", t.name)
		if err != nil {
			return fmt.Errorf("read %s %s table: %w", f.name, t.name, classify(err))
		}
		cur := parseSave(string(out), t.name)
		if len(t.rules) == 0 && cur.empty() {
			continue
		}
		input.WriteString(t.restoreInput(cur))
	}
	if input.Len() == 0 {
		return nil
	}
	return restore(ctx, r, f, input.String())
}

func restore(ctx context.Context, r Runner, f family, input string) error {
	if _, err := r.Run(ctx, []byte(input), f.restore, "--noflush"); err != nil {
		return fmt.Errorf("write %s tables: %w", f.name, classify(err))
	}
	return nil
}

// classify adds the sentinel that explains err, if one does.
func classify(err error) error {
	if errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("%w: %w", ErrIptablesNotFound, err)
	}
	msg := err.Error()
	// iptables-legacy: "can't initialize iptables table `nat': Permission denied (you must be root)";
	// iptables-nft: "Could not fetch rule set generation id: Permission denied (you must be root)"
	// or "Operation not permitted".
	if strings.Contains(msg, "Permission denied") || strings.Contains(msg, "Operation not permitted") ||
		strings.Contains(msg, "you must be root") {
		return fmt.Errorf("%w: %w", ErrNeedNetAdmin, err)
	}
	return err
}
