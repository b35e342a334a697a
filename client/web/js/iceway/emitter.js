// A small typed event emitter: `on` returns the function that unsubscribes.
export class Emitter {
    listeners = new Map();
    on(type, fn) {
        let set = this.listeners.get(type);
        if (!set) {
            set = new Set();
            this.listeners.set(type, set);
        }
        set.add(fn);
        return () => this.off(type, fn);
    }
    once(type, fn) {
        const off = this.on(type, (v) => {
            off();
            fn(v);
        });
        return off;
    }
    off(type, fn) {
        this.listeners.get(type)?.delete(fn);
    }
    emit(type, value) {
        const set = this.listeners.get(type);
        if (!set)
            return;
        for (const fn of [...set]) {
            try {
                fn(value);
            }
            catch (e) {
                // One listener's bug must not stop the others or the client's own handling.
                console.error(`iceway: a '${String(type)}' listener threw`, e);
            }
        }
    }
}
