//go:build !linux

package sqliteproxy

import "os/exec"

// dieWithParent: only Linux can tie a child's life to this process.
func dieWithParent(*exec.Cmd) {}
