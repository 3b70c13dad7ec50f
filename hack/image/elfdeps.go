package main

import (
	"bytes"
	"debug/elf"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
)

// libDirs are where the dynamic loader of a Debian system looks for
// libraries without an ld.so.cache: Debian's glibc has the multiarch
// directories built in as trusted directories.
func libDirs(triplet string) []string {
	return []string{"/lib/" + triplet, "/usr/lib/" + triplet, "/lib", "/usr/lib"}
}

// closure returns the paths in fs (symlinks included) that the ELF files at
// start need to run: themselves, their program interpreter (PT_INTERP) and,
// recursively, every DT_NEEDED library found in dirs. A library that is not
// there is an error, naming who needs it.
func (fs rootfs) closure(start []string, dirs []string) ([]string, error) {
	need := map[string]bool{}
	var queue []string
	add := func(p string) error {
		chain, err := fs.resolve(p)
		if err != nil {
			return err
		}
		for _, q := range chain {
			need[q] = true
		}
		file := chain[len(chain)-1]
		if !slices.Contains(queue, file) {
			queue = append(queue, file)
		}
		return nil
	}
	for _, p := range start {
		if err := add(p); err != nil {
			return nil, err
		}
	}
	for i := 0; i < len(queue); i++ {
		p := queue[i]
		interp, libs, err := elfNeeds(fs[p].data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if interp != "" {
			if err := add(interp); err != nil {
				return nil, fmt.Errorf("program interpreter of %s: %w", p, err)
			}
		}
		for _, lib := range libs {
			found := fs.find(lib, dirs)
			if found == "" {
				return nil, fmt.Errorf("%s needs %s, which none of the packages has in %s", p, lib, strings.Join(dirs, " "))
			}
			if err := add(found); err != nil {
				return nil, fmt.Errorf("%s needs %s: %w", p, lib, err)
			}
		}
	}
	out := make([]string, 0, len(need))
	for p := range need {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

// find returns the first dirs/soname in fs, or "".
func (fs rootfs) find(soname string, dirs []string) string {
	for _, d := range dirs {
		if _, ok := fs[path.Join(d, soname)]; ok {
			return path.Join(d, soname)
		}
	}
	return ""
}

// elfNeeds returns the program interpreter and the DT_NEEDED entries of an ELF file.
func elfNeeds(b []byte) (interp string, needed []string, err error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return "", nil, fmt.Errorf("not an ELF file: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			s := make([]byte, p.Filesz)
			if _, err := p.ReadAt(s, 0); err != nil {
				return "", nil, fmt.Errorf("reading PT_INTERP: %w", err)
			}
			interp = string(bytes.TrimRight(s, "\x00"))
		}
	}
	needed, err = f.ImportedLibraries()
	if err != nil {
		return "", nil, fmt.Errorf("reading DT_NEEDED: %w", err)
	}
	return interp, needed, nil
}
