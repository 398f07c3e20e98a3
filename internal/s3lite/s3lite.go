// Package s3lite is the little of the S3 API the driver needs beside
// Litestream: list the objects under a prefix, and delete them (erasing a
// tenant's replica), with AWS Signature Version 4 and path-style addressing,
// on the standard library only. Replication itself is Litestream's.
package s3lite

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Client talks to one bucket.
type Client struct {
	Endpoint     string // scheme://host[:port], no path
	Region       string
	Bucket       string
	AccessKey    string
	SecretKey    string
	SessionToken string
	HTTP         *http.Client
}

// FromReplicaURL returns a client for a Litestream v0.5 S3 replica URL
// (s3://bucket/prefix?endpoint=...&region=...) and the URL's prefix (no
// leading or trailing slash). Credentials come from the environment as
// Litestream reads them: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
// AWS_SESSION_TOKEN), else LITESTREAM_ACCESS_KEY_ID and
// LITESTREAM_SECRET_ACCESS_KEY.
// ResponseTimeout bounds the wait for a response's headers once a request
// is sent: an endpoint that accepts connections and never answers (a
// partition, a firewall that drops) held the calls of a caller without a
// deadline for ever. A body on its way is not cut short. Read once, at the
// first client made.
var ResponseTimeout = 30 * time.Second

var (
	transportOnce sync.Once
	transport     *http.Transport
)

// httpClient is http.DefaultClient with ResponseTimeout, its connections
// shared by every Client.
func httpClient() *http.Client {
	transportOnce.Do(func() {
		transport = http.DefaultTransport.(*http.Transport).Clone()
		transport.ResponseHeaderTimeout = ResponseTimeout
	})
	return &http.Client{Transport: transport}
}

func FromReplicaURL(raw string) (*Client, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, "", err
	}
	if u.Scheme != "s3" || u.Host == "" {
		return nil, "", fmt.Errorf("%q is not an s3://bucket/prefix URL", raw)
	}
	q := u.Query()
	c := &Client{Bucket: u.Host, Region: q.Get("region"), Endpoint: strings.TrimSuffix(q.Get("endpoint"), "/"), HTTP: httpClient()}
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	if c.Endpoint == "" {
		c.Endpoint = "https://s3." + c.Region + ".amazonaws.com"
	} else if !strings.Contains(c.Endpoint, "://") {
		c.Endpoint = "https://" + c.Endpoint
	}
	c.AccessKey, c.SecretKey = os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
	c.SessionToken = os.Getenv("AWS_SESSION_TOKEN")
	if c.AccessKey == "" {
		c.AccessKey, c.SecretKey = os.Getenv("LITESTREAM_ACCESS_KEY_ID"), os.Getenv("LITESTREAM_SECRET_ACCESS_KEY")
	}
	if c.AccessKey == "" || c.SecretKey == "" {
		return nil, "", errors.New("no S3 credentials in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
	}
	return c, strings.Trim(u.Path, "/"), nil
}

// Object is one listed object.
type Object struct {
	Key          string    `xml:"Key"`
	Size         int64     `xml:"Size"`
	LastModified time.Time `xml:"LastModified"`
}

type listResult struct {
	Contents       []Object `xml:"Contents"`
	CommonPrefixes []struct {
		Prefix string `xml:"Prefix"`
	} `xml:"CommonPrefixes"`
	IsTruncated           bool   `xml:"IsTruncated"`
	NextContinuationToken string `xml:"NextContinuationToken"`
}

// List lists the objects whose keys start with prefix (ListObjectsV2, every
// page). With a delimiter it returns the common prefixes too.
func (c *Client) List(ctx context.Context, prefix, delimiter string) (objects []Object, prefixes []string, err error) {
	token := ""
	for {
		q := url.Values{"list-type": {"2"}, "prefix": {prefix}}
		if delimiter != "" {
			q.Set("delimiter", delimiter)
		}
		if token != "" {
			q.Set("continuation-token", token)
		}
		body, err := c.do(ctx, http.MethodGet, "", q, http.StatusOK)
		if err != nil {
			return nil, nil, fmt.Errorf("list s3://%s/%s: %w", c.Bucket, prefix, err)
		}
		var r listResult
		if err := xml.Unmarshal(body, &r); err != nil {
			return nil, nil, fmt.Errorf("list s3://%s/%s: %w", c.Bucket, prefix, err)
		}
		objects = append(objects, r.Contents...)
		for _, p := range r.CommonPrefixes {
			prefixes = append(prefixes, p.Prefix)
		}
		if !r.IsTruncated || r.NextContinuationToken == "" {
			return objects, prefixes, nil
		}
		token = r.NextContinuationToken
	}
}

// CreateBucket creates the client's bucket.
func (c *Client) CreateBucket(ctx context.Context) error {
	if _, err := c.do(ctx, http.MethodPut, "", nil, http.StatusOK); err != nil {
		return fmt.Errorf("create bucket %s: %w", c.Bucket, err)
	}
	return nil
}

// DeletePrefix deletes every object under prefix+"/" and returns how many
// it deleted.
func (c *Client) DeletePrefix(ctx context.Context, prefix string) (int, error) {
	objs, _, err := c.List(ctx, strings.TrimSuffix(prefix, "/")+"/", "")
	if err != nil {
		return 0, err
	}
	for i, o := range objs {
		if err := c.Delete(ctx, o.Key); err != nil {
			return i, err
		}
	}
	return len(objs), nil
}

// Delete deletes the object at key (none there is no error).
func (c *Client) Delete(ctx context.Context, key string) error {
	if _, err := c.do(ctx, http.MethodDelete, key, nil, http.StatusNoContent, http.StatusOK); err != nil {
		return fmt.Errorf("delete s3://%s/%s: %w", c.Bucket, key, err)
	}
	return nil
}

// do sends a signed request for key (empty: the bucket) and returns the
// body, or an error unless the status is one of ok.
func (c *Client) do(ctx context.Context, method, key string, query url.Values, ok ...int) ([]byte, error) {
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		return nil, err
	}
	u.Path = "/" + c.Bucket
	if key != "" {
		u.Path += "/" + key
	}
	u.RawQuery = strings.ReplaceAll(query.Encode(), "+", "%20") // sorted by key, as SigV4 wants
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	c.sign(req, u, time.Now().UTC())
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	for _, s := range ok {
		if resp.StatusCode == s {
			return b, nil
		}
	}
	var e struct {
		Code, Message string
	}
	if xml.Unmarshal(b, &e) == nil && e.Code != "" {
		// S3's error document, read: its raw XML was the message.
		return nil, fmt.Errorf("HTTP %d %s: %s", resp.StatusCode, e.Code, e.Message)
	}
	return nil, fmt.Errorf("HTTP %s: %s", strconv.Itoa(resp.StatusCode), bytes.TrimSpace(b[:min(len(b), 512)]))
}

// Probe lists at most one object under prefix: one request, which fails
// when the endpoint, the bucket or the credentials are wrong.
func (c *Client) Probe(ctx context.Context, prefix string) error {
	q := url.Values{"list-type": {"2"}, "prefix": {prefix}, "max-keys": {"1"}}
	body, err := c.do(ctx, http.MethodGet, "", q, http.StatusOK)
	if err == nil {
		// A 200 that is no listing (a web server's page at the endpoint)
		// is no S3 store.
		var r struct {
			XMLName xml.Name
		}
		if xml.Unmarshal(body, &r) != nil || r.XMLName.Local != "ListBucketResult" {
			err = fmt.Errorf("the answer is not an S3 listing (ListBucketResult): %.80q", body)
		}
	}
	if err != nil {
		return fmt.Errorf("list s3://%s/%s: %w", c.Bucket, prefix, err)
	}
	return nil
}

// emptyHash is the SHA-256 of an empty payload.
const emptyHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// sign adds AWS Signature Version 4 headers to req (no body).
func (c *Client) sign(req *http.Request, u *url.URL, now time.Time) {
	amzDate := now.Format("20060102T150405Z")
	day := now.Format("20060102")
	req.Header.Set("X-Amz-Date", amzDate)
	req.Header.Set("X-Amz-Content-Sha256", emptyHash)
	headers := "host:" + u.Host + "\nx-amz-content-sha256:" + emptyHash + "\nx-amz-date:" + amzDate + "\n"
	signed := "host;x-amz-content-sha256;x-amz-date"
	if c.SessionToken != "" {
		req.Header.Set("X-Amz-Security-Token", c.SessionToken)
		headers += "x-amz-security-token:" + c.SessionToken + "\n"
		signed += ";x-amz-security-token"
	}
	canon := strings.Join([]string{req.Method, u.EscapedPath(), u.RawQuery, headers, signed, emptyHash}, "\n")
	scope := day + "/" + c.Region + "/s3/aws4_request"
	h := sha256.Sum256([]byte(canon))
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(h[:])
	key := []byte("AWS4" + c.SecretKey)
	for _, part := range []string{day, c.Region, "s3", "aws4_request"} {
		key = hmacSHA256(key, part)
	}
	req.Header.Set("Authorization", fmt.Sprintf("AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s",
		c.AccessKey, scope, signed, hex.EncodeToString(hmacSHA256(key, toSign))))
}

func hmacSHA256(key []byte, s string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s))
	return m.Sum(nil)
}
