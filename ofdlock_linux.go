package sqliteproxy

// Open file description locks (F_OFD_SETLK, F_OFD_GETLK; Linux 3.15): they
// belong to the descriptor, not the process, so the process's own SQLite
// connections conflict with them (they wait in their busy handler), and
// closing another descriptor of the file does not release them.
const (
	lockCmdSet = 37 // F_OFD_SETLK
	lockCmdGet = 36 // F_OFD_GETLK
)
