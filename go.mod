module github.com/sqliteproxy/sqliteproxy

go 1.26

require github.com/mattn/go-sqlite3 v1.14.53

require github.com/google/go-cmp v0.7.0
