package sqliteproxy

import (
	"os/exec"
	"syscall"
)

// dieWithParent has cmd killed if this process dies first: a litestream
// restore stuck on an object store that never answers outlived the
// service. (Linux sends the signal when the thread that started the child
// ends; Go ends threads only for goroutines that exit locked to one, and a
// restore killed that way fails and is tried again on the next access.)
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
