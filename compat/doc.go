// Package compat holds tests that run sqliteproxy under the usual Go data
// toolkits (sqlx, GORM, ent, bun, sqlc) on two tenants each. It is a
// separate module so that the sqliteproxy module never depends on an ORM;
// see README.md for what each toolkit needs.
package compat
