package cninode

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/tether-mesh/tether/internal/cni"
)

// confExts are the files a CNI runtime loads from the conf dir; it uses
// the first one by name.
var confExts = []string{".conf", ".conflist", ".json"}

// errNoConflist means the conf dir holds no network configuration yet: the
// node's primary CNI has not installed its own.
var errNoConflist = errors.New("no CNI network configuration in the conf dir yet (the node's primary CNI plugin has not written one)")

// firstConf returns the path of the file the runtime uses: the first, by
// name, with a CNI configuration extension.
func firstConf(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("read CNI conf dir: %w", err)
	}
	var names []string
	for _, e := range ents {
		if !e.IsDir() && slices.Contains(confExts, filepath.Ext(e.Name())) {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", errNoConflist
	}
	slices.Sort(names)
	return filepath.Join(dir, names[0]), nil
}

// entry is tether-cni's chained entry; nodeName is left out when empty.
func entry(hostKubeconfig string, exclude []string, nodeName string) (json.RawMessage, error) {
	e := map[string]any{"type": cni.PluginType, "kubeconfig": hostKubeconfig, "excludeNamespaces": exclude}
	if nodeName != "" {
		e["nodeName"] = nodeName
	}
	return json.Marshal(e)
}

// conflist is a decoded conflist that keeps every key and every other
// plugin's entry as it was.
type conflist struct {
	top     map[string]json.RawMessage
	plugins []json.RawMessage
}

func parseConflist(path string, raw []byte) (*conflist, error) {
	c := &conflist{}
	if err := json.Unmarshal(raw, &c.top); err != nil {
		return nil, fmt.Errorf("%s: not a JSON object: %w", path, err)
	}
	p, ok := c.top["plugins"]
	if !ok {
		return nil, fmt.Errorf("%s is a single-plugin configuration (no \"plugins\" list): tether-cni can only be chained into a .conflist; configure the node's primary CNI to write one", path)
	}
	if err := json.Unmarshal(p, &c.plugins); err != nil {
		return nil, fmt.Errorf("%s: \"plugins\" is not a list: %w", path, err)
	}
	return c, nil
}

func isOurs(p json.RawMessage) bool {
	var t struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(p, &t) == nil && t.Type == cni.PluginType
}

// hasEntry reports whether want is the last plugin, and the only
// tether-cni one.
func (c *conflist) hasEntry(want json.RawMessage) bool {
	n := len(c.plugins)
	if n == 0 || !sameJSON(c.plugins[n-1], want) {
		return false
	}
	return !slices.ContainsFunc(c.plugins[:n-1], isOurs)
}

// setEntry makes want the last plugin (removing other tether-cni entries);
// want nil removes them all.
func (c *conflist) setEntry(want json.RawMessage) {
	c.plugins = slices.DeleteFunc(c.plugins, isOurs)
	if want != nil {
		c.plugins = append(c.plugins, want)
	}
}

func (c *conflist) marshal() ([]byte, error) {
	p, err := json.Marshal(c.plugins)
	if err != nil {
		return nil, err
	}
	c.top["plugins"] = p
	var out bytes.Buffer
	b, err := json.Marshal(c.top)
	if err != nil {
		return nil, err
	}
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && reflect.DeepEqual(x, y)
}

// writeAtomic replaces path with b: a temporary file in the same dir (named
// so no runtime loads it), synced, then renamed over path.
func writeAtomic(path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tether-cni-*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// editConflist applies setEntry(want) to the conflist at path and writes it
// back (same mode) if that changed it. It reports whether it wrote.
func editConflist(path string, want json.RawMessage) (bool, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	c, err := parseConflist(path, raw)
	if err != nil {
		return false, err
	}
	if want != nil && c.hasEntry(want) {
		return false, nil
	}
	before := len(c.plugins)
	c.setEntry(want)
	if want == nil && len(c.plugins) == before {
		return false, nil
	}
	b, err := c.marshal()
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	return true, writeAtomic(path, b, mode)
}

// entryInPlace reports nil when the first conflist of dir ends with want,
// or why not.
func entryInPlace(dir string, want json.RawMessage) error {
	path, err := firstConf(dir)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	c, err := parseConflist(path, raw)
	if err != nil {
		return err
	}
	if !c.hasEntry(want) {
		return fmt.Errorf("%s does not end with tether-cni's entry", path)
	}
	return nil
}

// removeEntries removes tether-cni's entries from every configuration of
// dir, and reports the files it changed.
func removeEntries(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read CNI conf dir: %w", err)
	}
	var changed []string
	var errs []error
	for _, e := range ents {
		if e.IsDir() || !slices.Contains(confExts, filepath.Ext(e.Name())) || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		wrote, err := editConflist(path, nil)
		if err != nil {
			if raw, rerr := os.ReadFile(path); rerr == nil && !bytes.Contains(raw, []byte(cni.PluginType)) {
				continue // not a conflist, and nothing of ours in it
			}
			errs = append(errs, err)
			continue
		}
		if wrote {
			changed = append(changed, path)
		}
	}
	return changed, errors.Join(errs...)
}
