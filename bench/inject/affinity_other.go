//go:build !linux

package main

func pinToOneCPU() {}
