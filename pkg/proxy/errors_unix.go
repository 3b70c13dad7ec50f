package proxy

import "syscall"

var errTooManyFiles = syscall.EMFILE
