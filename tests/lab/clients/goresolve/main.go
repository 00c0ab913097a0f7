// goresolve: a pure-Go resolver client for the dnstrail lab (CGO_ENABLED=0, stdlib only).
//
//	goresolve [-n ROUNDS] [-interval 100ms] [-connect PORT] [-timeout 5s] NAME...
//
// Resolves every NAME ROUNDS times with net.DefaultResolver (PreferGo, no cache: this models
// a Go service hammering a name), printing "NAME ADDRESS" per address or "NAME ERROR <err>".
// With -connect it dials the first address of the first name that resolved, over TCP, and
// prints "CONNECT ADDRESS PORT ok" or "CONNECT ADDRESS PORT error <err>".
// Exit status: 0 when everything succeeded, 2 otherwise, 64 on bad usage.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

const maxRounds = 100000

func main() {
	rounds := flag.Int("n", 1, "rounds")
	interval := flag.Duration("interval", 0, "pause between rounds")
	port := flag.Int("connect", 0, "TCP port to dial on the first address afterwards")
	timeout := flag.Duration("timeout", 5*time.Second, "timeout of each lookup")
	flag.Parse()
	names := flag.Args()
	if len(names) == 0 || len(names) > 64 || *rounds < 1 || *rounds > maxRounds ||
		*port < 0 || *port > 65535 {
		fmt.Fprintln(os.Stderr, "usage: goresolve [-n ROUNDS] [-interval D] [-connect PORT] NAME...")
		os.Exit(64)
	}
	net.DefaultResolver.PreferGo = true
	status := 0
	first := ""
	for r := 0; r < *rounds; r++ {
		if r > 0 && *interval > 0 {
			time.Sleep(*interval)
		}
		for _, name := range names {
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			addrs, err := net.DefaultResolver.LookupHost(ctx, name)
			cancel()
			if err != nil {
				fmt.Printf("%s ERROR %v\n", name, err)
				status = 2
				continue
			}
			for i, a := range addrs {
				if i >= 64 {
					break
				}
				fmt.Printf("%s %s\n", name, a)
				if first == "" {
					first = a
				}
			}
		}
	}
	if *port != 0 {
		if first == "" {
			fmt.Printf("CONNECT - %d error no address\n", *port)
			status = 2
		} else {
			addr := net.JoinHostPort(first, strconv.Itoa(*port))
			c, err := net.DialTimeout("tcp", addr, 3*time.Second)
			if err != nil {
				fmt.Printf("CONNECT %s %d error %v\n", first, *port, err)
				status = 2
			} else {
				c.Close()
				fmt.Printf("CONNECT %s %d ok\n", first, *port)
			}
		}
	}
	os.Exit(status)
}
