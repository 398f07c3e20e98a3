// Command sqliteproxy is the operations tool for a sqliteproxy data
// directory: one SQLite file per tenant, <dir>/<id>.db, or
// <dir>/<bucket>/<id>.db in the bucketed layout.
//
//	sqliteproxy tenants [-json]                          list tenants
//	sqliteproxy replicas -replica URL [-json]            list the tenants that have a replica under URL
//	sqliteproxy create [-migrations DIR] ID              create a tenant (with the migrations applied)
//	sqliteproxy delete [-yes] [-force] ID                delete a tenant and all its data
//	sqliteproxy backup [-force] ID FILE                  online backup of one tenant
//	sqliteproxy backup -all [-force] DIR                 DIR/<id>.db for every tenant
//	sqliteproxy restore [-force] ID FILE                 replace a tenant's data with a backup
//	sqliteproxy restore -replica URL [-at TIME] [-litestream PATH] [-force] ID
//	                                                     ... or with its replica, latest or as at TIME
//	sqliteproxy migrate -migrations DIR [-dry-run] [-concurrency N] [ID...]
//	sqliteproxy migrate -migrations DIR -down-to N [-dry-run] [-concurrency N] [ID...]
//	                                                     ... or roll back to version N with the .down.sql files
//	sqliteproxy status [-json] [-migrations DIR] [-replica URL] [ID]
//	                                                     schema version, pending migrations, size, replica position
//	sqliteproxy check [ID]                               PRAGMA integrity_check
//	sqliteproxy relayout -to flat|buckets                convert the directory to another layout
//	sqliteproxy query [-tenants ID,ID...] [-concurrency N] [-skip-errors] [-json] SQL
//	                                                     a read-only query on every (or the listed) tenant
//
// Every command but replicas, compact, nodes, owners and move takes -dir (default ./data), the data
// directory, which must exist: the tool never creates it, and never creates
// a tenant file except with create and restore (a mistyped ID is "no
// tenant", not a new database). Nothing migrates as a side effect: only
// migrate applies migrations.
//
// The data directory is in the flat layout (<dir>/<id>.db) or the bucketed
// one (<dir>/<bucket>/<id>.db, 256 folders; see sqliteproxy.Layout). The
// commands that take -dir, but relayout (whose -to is the layout), also
// take -layout: auto (the default) uses the layout the directory records,
// flat or buckets insist on one. Fleet-wide
// commands (tenants, migrate, backup -all, status and check without an ID)
// go through the tenants in the order of Proxy.AllTenants: sorted in a
// flat directory, bucket by bucket (each sorted) in a bucketed one.
// backup -all writes DIR/<id>.db whatever the layout.
//
// relayout converts a directory from one layout to the other, offline: it
// refuses a directory that a service or another command has open, and a
// tenant another process has open. It is crash-safe: interrupted at any
// point (Ctrl-C, a crash, an error), it leaves every tenant in exactly one
// place, and the directory marked so that nothing opens it until relayout
// is run again (to either layout) and finishes.
//
// migrate -down-to N rolls tenants back to version N (the number of
// migrations kept) with Proxy.Rollback: the NNNN_name.down.sql files of
// -migrations run newest first, all of a tenant's in one transaction, so
// each tenant ends wholly at N or, when a down migration fails, wholly
// where it was. A tenant that needs a down file that is missing, or whose
// ledger has drifted, fails (exit status 1) and the others go on. A
// service in migration_mode=auto applies the rolled-back migrations again
// when it next opens a tenant if its migrations still include them: run
// it in migration_mode=manual (tenants behind are served as they are)
// while rolling back, and deploy it without them after. status shows
// tenants that are behind (PENDING) and ahead of -migrations.
//
// Replicas are Litestream v0.5 replicas, named by the URL the service has
// as Config.ReplicaURL (file:///path, or s3://bucket/prefix with
// ?endpoint=... for S3-compatible stores; S3 credentials come from the
// environment, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): tenant ID's
// replica is <URL>/<ID>. restore -replica runs the litestream binary
// (-litestream, default litestream on PATH) to fetch it into a temporary
// file in the data directory, then verifies it and swaps it in like a
// backup. status -replica compares the position (transaction ID) that
// Litestream recorded beside each tenant's file with its replica's:
// behind (not uploaded yet), in sync, ahead (the replica has transactions
// this copy lacks: written elsewhere since), restored (restored on purpose:
// the replica's head to be), never streamed (made without replication
// beside a replica holding another copy: the service refuses it) or
// deleted here (its replica not erased yet: the object store was down;
// listed even with no file here).
//
// tenants, create, backup, migrate, status and check are safe while a
// service uses the directory (SQLite's locking; migrate applies each
// migration in a BEGIN IMMEDIATE transaction). delete and restore are not:
// they can only drain connections in this process, so they refuse a
// tenant that another process has open (on Linux, one holding its lock;
// elsewhere, its -wal or -shm file exists);
// stop the service first, or delete and restore through its Proxy.
//
// query runs one read-only statement on every tenant (or those of
// -tenants) through sqliteproxy.WithFanOut and prints one result: a first
// column tenant, then the statement's columns, tenants in ID order, as an
// aligned table with a header line or, with -json, an array of objects
// whose keys are in column order (BLOBs that are not UTF-8 are base64),
// always a whole array ([] when the query fails before its first row);
// -json refuses a result with two columns of one name (tenant included),
// which would be an object with a key twice: alias one.
// Statements that could write are refused and run nowhere. Tenants are read
// as they are: no migration is checked or applied. A tenant that fails (a
// missing table, a listed tenant that does not exist) stops the query with
// its error, after the rows of the tenants before it; with -skip-errors it
// is reported on stderr, the others are printed, and the exit status is 1.
//
// check runs PRAGMA integrity_check through Proxy.CheckTenant, which, like
// backups, bypasses the migration gate: tenants whose migrations do not
// match -migrations are checked too.
//
// Fleet-wide commands (migrate, backup -all, check and status without an
// ID) draw a progress bar on stderr when stderr is a terminal; piped, they
// print only their results. Results go to stdout, errors to stderr, one line
// each, prefixed "sqliteproxy: ".
//
// Exit status: 0 when everything succeeded; 1 when an operation failed for
// at least one tenant (not found, already exists, corrupt file, failed
// migration, rollback or integrity check, delete not confirmed,
// interrupted), or when the data directory cannot be opened (an unknown
// layout marker, an interrupted relayout), whatever -layout says; 2 for
// usage errors (unknown command or flag, wrong number of arguments, invalid
// tenant ID, a -down-to beyond the migrations of -migrations,
// a directory or file named on the command line that does not exist, an
// empty name ("") for one (a file that exists but holds nothing is not a
// database: 1), a -layout other than auto, flat or buckets, a negative -down-to,
// a -replica that is not a URL or an -at that is not an RFC 3339 time,
// delete without -yes on a non-interactive stdin, a query -json whose
// result has two columns of one name; a result with a column named tenant
// the fan-out itself refuses, which exits 1).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/sqliteproxy/sqliteproxy"
	"golang.org/x/term"
)

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1 // the operation failed for at least one tenant
	exitUsage  = 2 // the command line is wrong
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run runs the command line args (without the program name) and returns
// the exit status. SIGINT and SIGTERM cancel the running operation.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := &env{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	return e.main(args)
}

// env is one invocation: its context and standard streams.
type env struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// command is a subcommand.
type command struct {
	name     string
	synopsis string // arguments, after the command name
	summary  string
	run      func(e *env, args []string) int
}

var commands []command

func init() {
	// Assigned here: the commands' run functions refer to commands (usage).
	commands = []command{
		{"tenants", "[-dir DIR] [-layout L] [-json]", "list the tenants, one ID per line", (*env).tenants},
		{"compact", "-replica URL [-retention D] [ID ...]", "compact the replicas of tenants (all in the replica by default): restores stay fast", (*env).compact},
		{"replicas", "-replica URL [-json]", "list the tenants that have a replica under URL, one ID per line", (*env).replicas},
		{"create", "[-dir DIR] [-layout L] [-migrations DIR] ID", "create a tenant, with the migrations applied", (*env).create},
		{"delete", "[-dir DIR] [-layout L] [-yes] [-force] ID", "delete a tenant and all its data (asks first unless -yes)", (*env).delete},
		{"backup", "[-dir DIR] [-layout L] [-force] ID FILE | -all [-force] DIR", "online backup of one tenant, or of all into DIR/<id>.db", (*env).backup},
		{"restore", "[-dir DIR] [-layout L] [-force] ID FILE | -replica URL [-at TIME] [-litestream PATH] [-dir DIR] [-layout L] [-force] ID", "replace a tenant's data with a backup or its replica (creates the tenant if missing)", (*env).restore},
		{"migrate", "[-dir DIR] [-layout L] -migrations DIR [-down-to N] [-dry-run] [-concurrency N] [ID...]", "apply pending migrations to all (or the named) tenants, or roll them back to version N", (*env).migrate},
		{"status", "[-dir DIR] [-layout L] [-migrations DIR] [-replica URL] [-json] [ID]", "schema version, pending migrations, size, last change (and replica position) per tenant", (*env).status},
		{"check", "[-dir DIR] [-layout L] [ID]", "PRAGMA integrity_check on one or all tenants", (*env).check},
		{"relayout", "[-dir DIR] -to flat|buckets", "convert the data directory to another layout, offline (crash-safe; run again to finish)", (*env).relayout},
		{"query", "[-dir DIR] [-layout L] [-tenants ID,ID...] [-concurrency N] [-skip-errors] [-json] 'SELECT ...'", "run a read-only query on every (or the listed) tenant: one result, tenant first", (*env).query},
		{"nodes", "-etcd ENDPOINTS [-json]", "the live nodes of a cluster and their URLs", (*env).nodes},
		{"owners", "-etcd ENDPOINTS [-json]", "which node owns which tenant, and its generation", (*env).owners},
		{"move", "-etcd ENDPOINTS -to NODE [-timeout D] ID", "hand a tenant over to another node: synced, released, taken", (*env).move},
	}
}

func (e *env) main(args []string) int {
	if len(args) == 0 {
		e.errorf("no command given")
		e.usage(e.stderr)
		return exitUsage
	}
	switch name := args[0]; name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if c := findCommand(args[1]); c != nil {
				return c.run(e, []string{"-h"})
			}
			e.errorf("unknown command %q", args[1])
			e.usage(e.stderr)
			return exitUsage
		}
		e.usage(e.stdout)
		return exitOK
	default:
		c := findCommand(name)
		if c == nil {
			e.errorf("unknown command %q", name)
			e.usage(e.stderr)
			return exitUsage
		}
		return c.run(e, args[1:])
	}
}

func findCommand(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

func (e *env) usage(w io.Writer) {
	fmt.Fprintf(w, "usage: sqliteproxy COMMAND [flags] [args]\n\nOperations on a sqliteproxy data directory (one SQLite file per tenant, <dir>/<id>.db or <dir>/<bucket>/<id>.db).\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nEvery command but replicas, compact, nodes, owners and move takes -dir DIR (default ./data);\n"+
		"all of these but relayout (whose -to is the layout) also take -layout L: auto (default), flat or buckets.\n"+
		"Run 'sqliteproxy COMMAND -h' for its flags.\n"+
		"Replica URLs are Litestream's (file:///path, s3://bucket/prefix?endpoint=...), as in Config.ReplicaURL;\n"+
		"S3 credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).\n"+
		"Exit status: 0 ok, 1 failed for some tenant, 2 usage error.\n")
}

// errorf prints a one-line error on stderr.
func (e *env) errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintln(e.stderr, "sqliteproxy: "+strings.ReplaceAll(msg, "\n", "; "))
}

// errText renders a library error on one line without the repeated
// "sqliteproxy: " of its layers (the caller prefixes it once).
func errText(err error) string {
	return strings.ReplaceAll(strings.ReplaceAll(err.Error(), "sqliteproxy: ", ""), "\n", "; ")
}

// flags is the parsed command line of one subcommand.
type flags struct {
	*flag.FlagSet
	cmd    *command
	dir    *string
	layout *string
}

// newFlags returns the flag set of the named command, with -dir and -layout.
func (e *env) newFlags(name string) *flags {
	f := e.newFlagsNoDir(name)
	f.dir = f.String("dir", "./data", "the data `directory`, holding one <id>.db file per tenant (must exist)")
	f.layout = f.String("layout", "auto", "the data directory's `layout`: flat (<dir>/<id>.db), buckets (<dir>/<bucket>/<id>.db) or auto (as the directory records it)")
	return f
}

// newFlagsNoDir returns the flag set of the named command, without -dir:
// for a command that does not touch the data directory (replicas).
func (e *env) newFlagsNoDir(name string) *flags {
	c := findCommand(name)
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by parse, help by printHelp
	return &flags{FlagSet: fs, cmd: c}
}

// isSet reports whether the flag name was given on the command line.
func (f *flags) isSet(name string) bool {
	set := false
	f.Visit(func(fl *flag.Flag) { set = set || fl.Name == name })
	return set
}

// parse parses args, flags and positional arguments in any order ("--"
// ends the flags), and checks the number of positional arguments. On
// failure it returns the exit status to return.
func (e *env) parse(f *flags, args []string, minArgs, maxArgs int) ([]string, int, bool) {
	var pos []string
	for {
		err := f.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			e.printHelp(f, e.stdout)
			return nil, exitOK, false
		}
		if err != nil {
			return nil, e.usageError(f, "%s", err), false
		}
		rest := f.Args()
		if len(rest) == 0 {
			break
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	switch {
	case len(pos) < minArgs:
		return nil, e.usageError(f, "too few arguments"), false
	case maxArgs >= 0 && len(pos) > maxArgs:
		return nil, e.usageError(f, "too many arguments: %s", strings.Join(pos, " ")), false
	}
	return pos, exitOK, true
}

func (e *env) usageError(f *flags, format string, args ...any) int {
	e.errorf(f.cmd.name+": "+format, args...)
	fmt.Fprintf(e.stderr, "usage: sqliteproxy %s %s\n", f.cmd.name, f.cmd.synopsis)
	return exitUsage
}

func (e *env) printHelp(f *flags, w io.Writer) {
	fmt.Fprintf(w, "usage: sqliteproxy %s %s\n\n%s.\n\nFlags:\n", f.cmd.name, f.cmd.synopsis, f.cmd.summary)
	f.SetOutput(w)
	f.PrintDefaults()
	f.SetOutput(io.Discard)
}

// checkID validates a tenant ID from the command line.
func (e *env) checkID(f *flags, id string) bool {
	if err := sqliteproxy.ValidTenantID(id); err != nil {
		e.errorf("%s: %s", f.cmd.name, strings.TrimPrefix(errText(err), "check tenant ID: "))
		return false
	}
	return true
}

// requireDir checks that path names an existing directory.
func requireDir(what, path string) error {
	if path == "" {
		return fmt.Errorf("%s is empty", what)
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s %s does not exist", what, path)
	case err != nil:
		return fmt.Errorf("%s: %w", what, err)
	case !fi.IsDir():
		return fmt.Errorf("%s %s is not a directory", what, path)
	}
	return nil
}

// open opens the proxy on the data directory of f. It checks first that
// the directory exists (sqliteproxy.New would create it). Tenants are
// never created implicitly (ExplicitCreate) and never migrated on access
// (MigrateCheck): only the commands that mean to create or migrate do.
func (e *env) open(f *flags, migrationsDir string) (*sqliteproxy.Proxy, int, bool) {
	return e.openMigrating(f, migrationsDir, false)
}

// openMigrating is open for a command that applies migrations, refusing
// one that adds a foreign key violation when foreignKeys: as a service
// with Config.ForeignKeys does, which the command must match (a migration
// the service refuses was applied here, orphaning rows).
func (e *env) openMigrating(f *flags, migrationsDir string, foreignKeys bool) (*sqliteproxy.Proxy, int, bool) {
	if migrationsDir != "" {
		if err := requireDir("migrations directory", migrationsDir); err != nil {
			e.errorf("%s: %v", f.cmd.name, err)
			return nil, exitUsage, false
		}
	}
	return e.openWith(f, sqliteproxy.Config{
		MigrationsDir:  migrationsDir,
		MigrationMode:  sqliteproxy.MigrateCheck,
		ExplicitCreate: true,
		ForeignKeys:    foreignKeys,
	})
}

// openWith opens the proxy configured by cfg on the data directory of f,
// in the layout of f's -layout, once the directory is found to exist.
// Only an invalid -layout is a usage error: a directory whose layout
// cannot be read (an unknown marker, an interrupted relayout) fails to
// open, with -layout auto as with flat or buckets.
func (e *env) openWith(f *flags, cfg sqliteproxy.Config) (*sqliteproxy.Proxy, int, bool) {
	layout, auto, ok := layoutFlag(*f.layout)
	if !ok {
		return nil, e.usageError(f, "-layout %q is not flat, buckets or auto", *f.layout), false
	}
	if err := requireDir("data directory", *f.dir); err != nil {
		e.errorf("%s: %v", f.cmd.name, err)
		return nil, exitUsage, false
	}
	if auto {
		var err error
		if layout, err = sqliteproxy.DirLayout(*f.dir); err != nil {
			e.errorf("%s: %s", f.cmd.name, errText(err))
			return nil, exitFailed, false
		}
	}
	if layout == sqliteproxy.LayoutBuckets && readsOnly[f.cmd.name] && unmarkedEmpty(*f.dir) {
		// A proxy opened with buckets on an unmarked directory without
		// tenants marks it bucketed for good; a command that only reads
		// must not change what auto means there. Flat reads the same
		// nothing and writes nothing.
		layout = sqliteproxy.LayoutFlat
	}
	cfg.Dir, cfg.Layout = *f.dir, layout
	p, err := sqliteproxy.New(cfg)
	if err != nil {
		e.errorf("%s: %s", f.cmd.name, errText(err))
		return nil, exitFailed, false
	}
	return p, exitOK, true
}

// readsOnly names the commands that never change the data directory (a
// backup is written elsewhere).
var readsOnly = map[string]bool{"tenants": true, "backup": true, "status": true, "check": true, "query": true}

// unmarkedEmpty reports whether dir records no layout and holds no
// database file at its top: no tenant in either layout.
func unmarkedEmpty(dir string) bool {
	if l, err := sqliteproxy.DirLayout(dir); err != nil || l != sqliteproxy.LayoutFlat {
		return false
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".db") {
			return false
		}
	}
	return true
}

// layoutFlag parses a -layout flag: flat or buckets, or auto (the layout
// the directory records, sqliteproxy.DirLayout). ok is false for any
// other value.
func layoutFlag(v string) (l sqliteproxy.Layout, auto, ok bool) {
	switch v {
	case "flat":
		return sqliteproxy.LayoutFlat, false, true
	case "buckets":
		return sqliteproxy.LayoutBuckets, false, true
	case "auto":
		return 0, true, true
	}
	return 0, false, false
}

// allTenants lists every tenant, in the order of Proxy.AllTenants.
func (e *env) allTenants(p *sqliteproxy.Proxy, op string) ([]string, bool) {
	var ids []string
	for id, err := range p.AllTenants(e.ctx) {
		if err != nil {
			e.errorf("%s: %s", op, errText(err))
			return nil, false
		}
		ids = append(ids, id)
	}
	return ids, true
}

// addStrays adds the data directory's strays (entries named as tenant
// files that are not regular files) to failed, for op; false when the
// directory could not be read (reported).
func (e *env) addStrays(p *sqliteproxy.Proxy, op string, failed map[string]error) bool {
	found, err := strays(p)
	if err != nil {
		e.errorf("%s: %s", op, errText(err))
		return false
	}
	maps.Copy(failed, found)
	return true
}

// closeProxy closes p, reporting a failure.
func (e *env) closeProxy(p *sqliteproxy.Proxy, status *int) {
	if err := p.Close(); err != nil {
		e.errorf("close: %s", errText(err))
		*status = max(*status, exitFailed)
	}
}

// tenantNotInUse fails when another process has tenant id's file open.
func tenantNotInUse(p *sqliteproxy.Proxy, id string) error {
	path, err := p.TenantPath(id)
	if err != nil {
		return err
	}
	return notInUse(path)
}

// isTerminal reports whether v (a stream passed to run) is a terminal.
// Streams that are not *os.File (a test's buffers) are not terminals.
// Tests replace it to see the progress bar.
var isTerminal = func(v any) bool {
	f, ok := v.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// interactive reports whether delete may ask its question on stdin: stdin
// is a terminal, or a reader that is not a file at all (a caller of run
// that supplies the answer, such as a test). A pipe, a regular file or
// /dev/null is not interactive.
func (e *env) interactive() bool {
	if _, ok := e.stdin.(*os.File); !ok {
		return e.stdin != nil
	}
	return isTerminal(e.stdin)
}

// confirm asks question on stderr and reads the answer from stdin: only
// "y" or "yes" (any case) is a yes. An interrupt (Ctrl-C) while it waits
// is a no: it was ignored, and a "y" typed afterwards went ahead.
func (e *env) confirm(question string) bool {
	fmt.Fprintf(e.stderr, "%s [y/N] ", question)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(e.stdin).ReadString('\n')
		answer <- line
	}()
	var line string
	select {
	case line = <-answer:
	case <-e.ctx.Done():
	}
	if e.ctx.Err() != nil || line == "" {
		fmt.Fprintln(e.stderr)
		return false
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	}
	return false
}

// bar is a progress bar on stderr, or nothing when stderr is not a terminal.
// Its methods are no-ops on a nil *bar.
type bar struct{ pb *progressbar.ProgressBar }

func (e *env) newBar(total int, desc string) *bar {
	if total == 0 || !isTerminal(e.stderr) {
		return nil
	}
	return &bar{pb: progressbar.NewOptions(total,
		progressbar.OptionSetWriter(e.stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetRenderBlankState(true),
	)}
}

func (b *bar) set(n int) {
	if b != nil {
		b.pb.Set(n)
	}
}

// finish removes the bar, so that results can follow on a clean line.
func (b *bar) finish() {
	if b != nil {
		b.pb.Finish()
	}
}

// interrupted reports (once) that the context was cancelled.
func (e *env) interrupted() bool {
	if e.ctx.Err() == nil {
		return false
	}
	e.errorf("interrupted")
	return true
}
