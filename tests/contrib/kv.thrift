// A small service for the ThriftPool tests.
exception KeyNotFound {
    1: string key
}

service KV {
    string ping(),
    void put(1: string key, 2: string value),
    string get(1: string key) throws (1: KeyNotFound missing),
    i64 add(1: i64 a, 2: i64 b),
    string echo(1: string text),
    oneway void record(1: string event),
    list<string> recorded(),
    void crash(),
    void slow(1: double seconds),
}
