package compat_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/logger"
)

type gormCustomer struct {
	ID        uint
	Name      string      `gorm:"uniqueIndex;not null"`
	Tier      string      `gorm:"not null;default:free"`
	Orders    []gormOrder `gorm:"foreignKey:CustomerID;constraint:OnDelete:CASCADE"`
	CreatedAt time.Time
	UpdatedAt time.Time
}

func (gormCustomer) TableName() string { return "customers" }

type gormOrder struct {
	ID         uint
	CustomerID uint   `gorm:"not null;index"`
	Item       string `gorm:"not null"`
	Cents      int64
}

func (gormOrder) TableName() string { return "orders" }

func gormConfig(prepare bool) *gorm.Config {
	return &gorm.Config{
		TranslateError: true,
		PrepareStmt:    prepare,
		// GORM's advice for speed, usually taken with PrepareStmt: single
		// statements then run outside transactions, so INSERT ... RETURNING
		// is routed as a query.
		SkipDefaultTransaction: prepare,
		Logger:                 logger.Discard,
	}
}

// TestGORM_Conn hands the Proxy's *sql.DB to gorm.io/driver/sqlite.
func TestGORM_Conn(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, ForeignKeys: true})
	// Initialize runs "select sqlite_version()" without a tenant: the
	// driver answers it on a tenantless connection.
	db, err := gorm.Open(sqlite.Dialector{Conn: p.DB}, gormConfig(false))
	if err != nil {
		t.Fatalf("gorm.Open: %v", err)
	}
	exerciseGORM(t, db)
	requireTenantFiles(t, dir, tenantA, tenantB)
}

// TestGORM_DriverName lets gorm.io/driver/sqlite open the driver by name.
func TestGORM_DriverName(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db, err := gorm.Open(sqlite.New(sqlite.Config{
		DriverName: sqliteproxy.DriverName,
		DSN:        "dir=" + dir + "&foreign_keys=true",
	}), gormConfig(false))
	if err != nil {
		t.Fatalf("gorm.Open: %v", err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	defer sqlDB.Close()
	exerciseGORM(t, db)
	requireTenantFiles(t, dir, tenantA, tenantB)
}

// TestGORM_PrepareStmt runs with GORM's statement cache, whose prepared
// statements are shared by all tenants: each execution routes by its own
// context.
func TestGORM_PrepareStmt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, ForeignKeys: true})
	db, err := gorm.Open(sqlite.Dialector{Conn: p.DB}, gormConfig(true))
	if err != nil {
		t.Fatalf("gorm.Open: %v", err)
	}
	if _, ok := db.ConnPool.(*gorm.PreparedStmtDB); !ok {
		t.Fatalf("ConnPool is %T, want *gorm.PreparedStmtDB", db.ConnPool)
	}
	exerciseGORM(t, db)
	requireTenantFiles(t, dir, tenantA, tenantB)
}

func gormNames(t *testing.T, db *gorm.DB) []string {
	t.Helper()
	var names []string
	if err := db.Model(&gormCustomer{}).Order("name").Pluck("name", &names).Error; err != nil {
		t.Fatalf("Pluck: %v", err)
	}
	return names
}

func exerciseGORM(t *testing.T, db *gorm.DB) {
	ctxA, ctxB := sqliteproxytest.Context(t, tenantA), sqliteproxytest.Context(t, tenantB)
	dbA, dbB := db.WithContext(ctxA), db.WithContext(ctxB)

	// Without a tenant nothing touches data, and no file is created.
	if err := db.AutoMigrate(&gormCustomer{}); !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("AutoMigrate without tenant: %v, want ErrNoTenant", err)
	}

	// Schema per tenant; running AutoMigrate twice is a no-op.
	for _, tdb := range []*gorm.DB{dbA, dbB, dbA} {
		if err := tdb.AutoMigrate(&gormCustomer{}, &gormOrder{}); err != nil {
			t.Fatalf("AutoMigrate: %v", err)
		}
	}
	if !dbB.Migrator().HasTable(&gormOrder{}) || !dbB.Migrator().HasIndex(&gormCustomer{}, "Name") {
		t.Error("tenant B lacks the orders table or the name index")
	}

	// Create, with a has-many association created along.
	alice := gormCustomer{Name: "alice", Orders: []gormOrder{{Item: "book", Cents: 1200}, {Item: "pen", Cents: 150}}}
	if err := dbA.Create(&alice).Error; err != nil {
		t.Fatalf("Create: %v", err)
	}
	if alice.ID != 1 || alice.Orders[1].ID != 2 || alice.Orders[1].CustomerID != alice.ID || alice.Tier != "free" {
		t.Errorf("ids and defaults not filled in: %+v", alice)
	}
	bob := gormCustomer{Name: "bob", Tier: "pro"}
	if err := dbA.Create(&bob).Error; err != nil {
		t.Fatal(err)
	}
	batch := []gormCustomer{{Name: "gina"}, {Name: "hank", Orders: []gormOrder{{Item: "desk", Cents: 30000}}}}
	if err := dbB.Create(&batch).Error; err != nil {
		t.Fatal(err)
	}
	if batch[0].ID != 1 || batch[1].ID != 2 {
		t.Errorf("tenant B ids = %d, %d; want 1, 2 (its own sequence)", batch[0].ID, batch[1].ID)
	}

	// Read, with Preload of the association.
	var got gormCustomer
	if err := dbA.Preload("Orders", func(db *gorm.DB) *gorm.DB { return db.Order("id") }).First(&got, "name = ?", "alice").Error; err != nil {
		t.Fatal(err)
	}
	if len(got.Orders) != 2 || got.Orders[0].Item != "book" || got.Orders[1].Item != "pen" {
		t.Errorf("Preload: %+v", got)
	}
	if alice.CreatedAt.IsZero() || !got.CreatedAt.Equal(alice.CreatedAt) || !got.UpdatedAt.Equal(alice.UpdatedAt) {
		t.Errorf("timestamps: wrote %v, %v; read %v, %v", alice.CreatedAt, alice.UpdatedAt, got.CreatedAt, got.UpdatedAt)
	}
	// Scanning into maps without a model uses the driver's column types.
	var maps []map[string]any
	if err := dbA.Table("customers").Order("id").Find(&maps).Error; err != nil {
		t.Fatal(err)
	}
	if len(maps) != 2 {
		t.Fatalf("maps: %v", maps)
	}
	if _, ok := maps[0]["id"].(int64); !ok {
		t.Errorf("id scanned as %T", maps[0]["id"])
	}
	if name, _ := maps[0]["name"].(string); name != "alice" {
		t.Errorf("name scanned as %T %v", maps[0]["name"], maps[0]["name"])
	}
	if ts, ok := maps[0]["created_at"].(time.Time); !ok || !ts.Equal(alice.CreatedAt) {
		t.Errorf("created_at scanned as %T %v", maps[0]["created_at"], maps[0]["created_at"])
	}
	// Upsert: ON CONFLICT ... DO UPDATE ... RETURNING.
	up := gormCustomer{Name: "bob", Tier: "gold"}
	if err := dbA.Clauses(clause.OnConflict{
		Columns:   []clause.Column{{Name: "name"}},
		DoUpdates: clause.AssignmentColumns([]string{"tier", "updated_at"}),
	}).Create(&up).Error; err != nil {
		t.Fatalf("upsert: %v", err)
	}
	if up.ID != bob.ID {
		t.Errorf("upsert id = %d, want bob's %d", up.ID, bob.ID)
	}
	var bob2 gormCustomer
	if err := dbA.First(&bob2, bob.ID).Error; err != nil || bob2.Tier != "gold" {
		t.Errorf("bob after upsert: %+v, %v", bob2, err)
	}
	var withOrders []gormCustomer
	if err := dbB.Preload("Orders").Order("name").Find(&withOrders).Error; err != nil {
		t.Fatal(err)
	}
	if len(withOrders) != 2 || len(withOrders[0].Orders) != 0 || len(withOrders[1].Orders) != 1 || withOrders[1].Orders[0].Item != "desk" {
		t.Errorf("Preload on B: %+v", withOrders)
	}
	var orders []gormOrder
	if err := dbA.Model(&bob).Association("Orders").Find(&orders); err != nil || len(orders) != 0 {
		t.Errorf("bob's orders: %v, %v", orders, err)
	}
	if err := dbA.Model(&bob).Association("Orders").Append(&gormOrder{Item: "lamp", Cents: 4000}); err != nil {
		t.Fatal(err)
	}
	var total int64
	if err := dbA.Model(&gormOrder{}).Select("sum(cents)").Scan(&total).Error; err != nil || total != 1200+150+4000 {
		t.Errorf("sum on A = %d, %v", total, err)
	}

	// Isolation: B never sees A's rows, even by A's primary keys.
	if err := dbB.First(&got, "name = ?", "alice").Error; !errors.Is(err, gorm.ErrRecordNotFound) {
		t.Errorf("tenant B finds alice: %v", err)
	}
	if names := gormNames(t, dbA); !slices.Equal(names, []string{"alice", "bob"}) {
		t.Errorf("A: %v", names)
	}
	if names := gormNames(t, dbB); !slices.Equal(names, []string{"gina", "hank"}) {
		t.Errorf("B: %v", names)
	}

	// Update and Delete touch one tenant only.
	if res := dbB.Model(&gormCustomer{}).Where("id = ?", 1).Update("tier", "pro"); res.Error != nil || res.RowsAffected != 1 {
		t.Fatalf("Update: %v, %d", res.Error, res.RowsAffected)
	}
	var tierA string
	if err := dbA.Model(&gormCustomer{}).Where("id = ?", 1).Pluck("tier", &tierA).Error; err != nil || tierA != "free" {
		t.Errorf("A's customer 1 tier = %q, %v; want free", tierA, err)
	}
	if err := dbB.Delete(&gormCustomer{}, batch[1].ID).Error; err != nil {
		t.Fatal(err)
	}
	var nOrders int64
	if err := dbB.Model(&gormOrder{}).Count(&nOrders).Error; err != nil || nOrders != 0 {
		t.Errorf("B's orders after cascading delete: %d, %v", nOrders, err)
	}
	if err := dbA.Model(&gormOrder{}).Count(&nOrders).Error; err != nil || nOrders != 3 {
		t.Errorf("A's orders: %d, %v; want 3", nOrders, err)
	}

	// Error translation: SQLite's errors reach GORM as sqlite3.Error values.
	if err := dbA.Create(&gormCustomer{Name: "alice"}).Error; !errors.Is(err, gorm.ErrDuplicatedKey) {
		t.Errorf("duplicate name: %v, want gorm.ErrDuplicatedKey", err)
	}
	if err := dbB.Create(&gormCustomer{Name: "alice"}).Error; err != nil {
		t.Errorf("tenant B may have its own alice: %v", err)
	}
	if err := dbA.Create(&gormOrder{CustomerID: 99, Item: "ghost"}).Error; !errors.Is(err, gorm.ErrForeignKeyViolated) {
		t.Errorf("order of a missing customer: %v, want gorm.ErrForeignKeyViolated", err)
	}

	// Transaction: rolled back on error, committed otherwise.
	boom := errors.New("boom")
	err := dbA.Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(&gormCustomer{Name: "carol"}).Error; err != nil {
			return err
		}
		if names := gormNames(t, tx); !slices.Contains(names, "carol") {
			t.Errorf("carol not visible in her transaction: %v", names)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Errorf("Transaction: %v", err)
	}
	err = dbA.Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(&gormCustomer{Name: "dave"}).Error; err != nil {
			return err
		}
		// A nested transaction is a SAVEPOINT: its rollback keeps dave.
		nested := tx.Transaction(func(tx2 *gorm.DB) error {
			if err := tx2.Create(&gormCustomer{Name: "erin"}).Error; err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(nested, boom) {
			t.Errorf("nested: %v", nested)
		}
		// The transaction is tenant A's: a context of B runs nowhere.
		if err := tx.WithContext(ctxB).Create(&gormCustomer{Name: "mallory"}).Error; !errors.Is(err, sqliteproxy.ErrTenantMismatch) {
			t.Errorf("B's context in A's transaction: %v, want ErrTenantMismatch", err)
		}
		// The duplicate fails the statement, not the transaction.
		if err := tx.Create(&gormCustomer{Name: "bob"}).Error; !errors.Is(err, gorm.ErrDuplicatedKey) {
			t.Errorf("duplicate in tx: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Transaction: %v", err)
	}
	// Manual Begin/Rollback.
	tx := dbB.Begin()
	if tx.Error != nil {
		t.Fatal(tx.Error)
	}
	if err := tx.Where("1 = 1").Delete(&gormCustomer{}).Error; err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback().Error; err != nil {
		t.Fatal(err)
	}

	if names := gormNames(t, dbA); !slices.Equal(names, []string{"alice", "bob", "dave"}) {
		t.Errorf("A after transactions: %v", names)
	}
	if names := gormNames(t, dbB); !slices.Equal(names, []string{"alice", "gina"}) {
		t.Errorf("B after transactions: %v", names)
	}

	// Forgetting WithContext is an error, never a silent default tenant.
	var all []gormCustomer
	if err := db.Find(&all).Error; !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("Find without tenant: %v, want ErrNoTenant", err)
	}
	if err := db.WithContext(context.Background()).Transaction(func(*gorm.DB) error { return nil }); !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("Transaction without tenant: %v, want ErrNoTenant", err)
	}
}

// gormCustomerV2 is the next version of gormCustomer: one more column.
type gormCustomerV2 struct {
	gormCustomer
	Email string `gorm:"not null;default:''"`
}

func (gormCustomerV2) TableName() string { return "customers" }

// TestGORM_Migrator evolves one tenant's schema and drops the other's.
// DropTable turns foreign keys off and on again with PRAGMAs run outside
// any transaction; they reach the tenant's writer, which ends with foreign
// keys on.
func TestGORM_Migrator(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, ForeignKeys: true})
	db, err := gorm.Open(sqlite.Dialector{Conn: p.DB}, gormConfig(false))
	if err != nil {
		t.Fatal(err)
	}
	dbA, dbB := db.WithContext(sqliteproxytest.Context(t, tenantA)), db.WithContext(sqliteproxytest.Context(t, tenantB))
	for _, tdb := range []*gorm.DB{dbA, dbB} {
		if err := tdb.AutoMigrate(&gormCustomer{}, &gormOrder{}); err != nil {
			t.Fatal(err)
		}
		if err := tdb.Create(&gormCustomer{Name: "zoe", Orders: []gormOrder{{Item: "cup"}}}).Error; err != nil {
			t.Fatal(err)
		}
	}

	if err := dbA.AutoMigrate(&gormCustomerV2{}); err != nil {
		t.Fatalf("AutoMigrate v2 on A: %v", err)
	}
	if !dbA.Migrator().HasColumn(&gormCustomerV2{}, "Email") || dbB.Migrator().HasColumn(&gormCustomerV2{}, "Email") {
		t.Error("the email column must exist on A only")
	}
	if err := dbA.Model(&gormCustomerV2{}).Where("name = ?", "zoe").Update("email", "zoe@acme").Error; err != nil {
		t.Error(err)
	}
	if err := dbB.Model(&gormCustomerV2{}).Where("name = ?", "zoe").Update("email", "zoe@globex").Error; err == nil {
		t.Error("tenant B updated a column it does not have")
	}

	if err := dbB.Migrator().DropTable(&gormOrder{}, &gormCustomer{}); err != nil {
		t.Fatalf("DropTable on B: %v", err)
	}
	if dbB.Migrator().HasTable(&gormCustomer{}) || !dbA.Migrator().HasTable(&gormCustomer{}) {
		t.Error("customers must be gone from B only")
	}
	var n int64
	if err := dbA.Model(&gormOrder{}).Count(&n).Error; err != nil || n != 1 {
		t.Errorf("A's orders: %d, %v", n, err)
	}
	if err := dbB.AutoMigrate(&gormCustomer{}, &gormOrder{}); err != nil {
		t.Fatal(err)
	}
	if err := dbB.Create(&gormOrder{CustomerID: 7, Item: "ghost"}).Error; !errors.Is(err, gorm.ErrForeignKeyViolated) {
		t.Errorf("foreign keys after DropTable on B: %v, want gorm.ErrForeignKeyViolated", err)
	}
	var tables []string
	if tables, err = dbB.Migrator().GetTables(); err != nil || !slices.Contains(tables, "orders") {
		t.Errorf("GetTables on B: %v, %v", tables, err)
	}
	requireTenantFiles(t, dir, tenantA, tenantB)
}

// TestGORM_Connection keeps one SQLite session for a TEMP table, as
// db.Connection promises.
func TestGORM_Connection(t *testing.T) {
	t.Parallel()
	p := sqliteproxytest.New(t, sqliteproxy.Config{})
	db, err := gorm.Open(sqlite.Dialector{Conn: p.DB}, gormConfig(false))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	err = db.WithContext(sqliteproxytest.Context(t, tenantA)).Connection(func(conn *gorm.DB) error {
		if err := conn.Exec("CREATE TEMP TABLE scratch (v INTEGER)").Error; err != nil {
			return err
		}
		if err := conn.Exec("INSERT INTO scratch VALUES (1), (2), (3)").Error; err != nil {
			return err
		}
		return conn.Raw("SELECT sum(v) FROM scratch").Scan(&n).Error
	})
	if err != nil || n != 6 {
		t.Errorf("Connection: sum %d, %v", n, err)
	}
}

// TestGORM_WriteOutsideTxWaits records a difference from plain SQLite
// pools: inside a Transaction callback, a write through the outer *gorm.DB
// (instead of tx) for the same tenant waits for the tenant's writer, which
// the transaction holds, until its context's deadline (without one, for
// busy_timeout, then SQLITE_BUSY as with mattn alone). Reads through the
// outer *gorm.DB go to a reader and do not wait. Use tx in the callback.
func TestGORM_WriteOutsideTxWaits(t *testing.T) {
	t.Parallel()
	p := sqliteproxytest.New(t, sqliteproxy.Config{})
	db, err := gorm.Open(sqlite.Dialector{Conn: p.DB}, gormConfig(false))
	if err != nil {
		t.Fatal(err)
	}
	ctx := sqliteproxytest.Context(t, tenantA)
	if err := db.WithContext(ctx).AutoMigrate(&gormCustomer{}); err != nil {
		t.Fatal(err)
	}
	err = db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(&gormCustomer{Name: "inside"}).Error; err != nil {
			return err
		}
		var n int64
		if err := db.WithContext(ctx).Model(&gormCustomer{}).Count(&n).Error; err != nil || n != 0 {
			t.Errorf("read outside the tx: %d, %v; want 0, nil", n, err)
		}
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		if err := db.WithContext(short).Create(&gormCustomer{Name: "outside"}).Error; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("write outside the tx: %v, want context.DeadlineExceeded", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Another tenant is never held up by A's transaction.
	err = db.WithContext(ctx).Transaction(func(*gorm.DB) error {
		short, cancel := context.WithTimeout(sqliteproxytest.Context(t, tenantB), 5*time.Second)
		defer cancel()
		return db.WithContext(short).AutoMigrate(&gormCustomer{})
	})
	if err != nil {
		t.Errorf("tenant B during A's transaction: %v", err)
	}
}
