// Command netcheck is the test pods' network client: what a tenant's workload
// could try, reported plainly.
//
//	netcheck tcp HOST:PORT                 exit 0 if a TCP connection opens
//	netcheck http [-X METHOD] [-H K:V]... [-d BODY] URL
//	                                       prints the status line, then the body
//
// A refused, dropped or timed-out connection exits 1 with the reason on stderr.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

type headers []string

func (h *headers) String() string     { return strings.Join(*h, ",") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	timeout := 3 * time.Second
	switch os.Args[1] {
	case "tcp":
		if len(os.Args) != 3 {
			usage()
		}
		conn, err := net.DialTimeout("tcp", os.Args[2], timeout)
		if err != nil {
			fail(err)
		}
		conn.Close()
		fmt.Println("connected")
	case "http":
		fs := flag.NewFlagSet("http", flag.ExitOnError)
		method := fs.String("X", "GET", "method")
		body := fs.String("d", "", "request body")
		wait := fs.Duration("t", 30*time.Second, "time limit of the whole request")
		var hs headers
		fs.Var(&hs, "H", "header K:V (repeat)")
		_ = fs.Parse(os.Args[2:])
		if fs.NArg() != 1 {
			usage()
		}
		req, err := http.NewRequest(*method, fs.Arg(0), strings.NewReader(*body))
		if err != nil {
			fail(err)
		}
		for _, h := range hs {
			k, v, _ := strings.Cut(h, ":")
			req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
		}
		client := &http.Client{Timeout: *wait, Transport: &http.Transport{DialContext: (&net.Dialer{Timeout: timeout}).DialContext}}
		resp, err := client.Do(req)
		if err != nil {
			fail(err)
		}
		defer resp.Body.Close()
		fmt.Println(resp.Status)
		_, _ = io.Copy(os.Stdout, resp.Body)
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: netcheck tcp HOST:PORT | netcheck http [-X METHOD] [-H K:V]... [-d BODY] [-t 30s] URL")
	os.Exit(2)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "netcheck:", err)
	os.Exit(1)
}
