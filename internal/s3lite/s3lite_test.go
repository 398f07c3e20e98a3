package s3lite

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// An endpoint that accepts connections and never answers: a call without a
// deadline fails after ResponseTimeout (it waited for ever).
func TestUnansweringEndpoint(t *testing.T) {
	ResponseTimeout = 200 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn // accepted, never answered
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	t.Setenv("AWS_ACCESS_KEY_ID", "k")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s")
	c, prefix, err := FromReplicaURL("s3://bucket/tenants?endpoint=http://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := c.List(context.Background(), prefix, "/")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "timeout") {
			t.Errorf("List from an endpoint that never answers: %v, want a timeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("List from an endpoint that never answers still waits 10 s on (ResponseTimeout 200ms)")
	}
}

// An S3 error is said by its code and message: the error document's raw
// XML was the message ("HTTP 404: <?xml version=...><Error><Code>...").
func TestErrorDocumentRead(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("max-keys") != "1" {
			t.Errorf("Probe asked for %q objects, want 1", r.URL.Query().Get("max-keys"))
		}
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>nope</BucketName></Error>`)
	}))
	defer srv.Close()
	c, prefix := testClient(t, "s3://nope/tenants?endpoint="+srv.URL)
	err := c.Probe(context.Background(), prefix)
	if err == nil || err.Error() != "list s3://nope/tenants: HTTP 404 NoSuchBucket: The specified bucket does not exist" {
		t.Errorf("Probe of a missing bucket: %v", err)
	}
}

// An endpoint that answers 200 with something other than a listing (a web
// server's welcome page) is no S3 store: Probe said it was.
func TestProbeNotAListing(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<html><body>Welcome to nginx!</body></html>")
	}))
	defer srv.Close()
	c, prefix := testClient(t, "s3://b/tenants?endpoint="+srv.URL)
	if err := c.Probe(context.Background(), prefix); err == nil || !strings.Contains(err.Error(), "not an S3 listing") {
		t.Errorf("Probe of a web server: %v", err)
	}
}

// testClient is FromReplicaURL of url with test credentials.
func testClient(t *testing.T, url string) (*Client, string) {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", "k")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s")
	c, prefix, err := FromReplicaURL(url)
	if err != nil {
		t.Fatal(err)
	}
	return c, prefix
}
