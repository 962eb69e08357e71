// Workload of bench/realworld.sh for QuickJS (wasm32-wasi): a mix of
// floats, objects and closures, strings, regular expressions, JSON and
// sorting with deterministic output. Argument: scale.
const SCALE = typeof scriptArgs !== "undefined" && scriptArgs.length > 1 ? parseInt(scriptArgs[1], 10) : 1;

function mandel(w, h, iters) {
  let inside = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const cr = (x / w) * 3 - 2, ci = (y / h) * 2 - 1;
      let zr = 0, zi = 0, i = 0;
      while (i < iters && zr * zr + zi * zi < 4) {
        const t = zr * zr - zi * zi + cr;
        zi = 2 * zr * zi + ci; zr = t; i++;
      }
      if (i === iters) inside++;
    }
  }
  return inside;
}

function objects(n) {
  let seed = 42;
  const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  const people = [];
  for (let i = 0; i < n; i++) {
    people.push({ id: i, name: "p" + (rnd() % 1000).toString(36), age: rnd() % 90, tags: [rnd() % 7, rnd() % 11] });
  }
  people.sort((a, b) => a.age - b.age || (a.name < b.name ? -1 : a.name > b.name ? 1 : a.id - b.id));
  const byAge = new Map();
  for (const p of people) byAge.set(p.age, (byAge.get(p.age) || 0) + p.tags[0] + p.tags[1]);
  const json = JSON.stringify(people.slice(0, 2000));
  const back = JSON.parse(json);
  return [people[0].name, people[n - 1].age, byAge.size, json.length, back.length].join(",");
}

function text(n) {
  const words = [];
  let s = 1;
  for (let i = 0; i < n; i++) {
    s = (s * 69069 + 1) >>> 0;
    words.push(["alpha", "beta", "gamma", "delta", "eps"][s % 5] + (s % 100));
  }
  const joined = words.join(" ");
  const m = joined.match(/gamma[0-9]+ delta[0-4]/g) || [];
  const replaced = joined.replace(/beta([0-9])([0-9])?/g, (_, a, b) => "B" + (b || a));
  return [m.length, replaced.length, replaced.split("B").length].join(",");
}

function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

for (let r = 0; r < SCALE; r++) {
  console.log("round", r);
  console.log("mandel", mandel(240, 160, 200));
  console.log("objects", objects(60000));
  console.log("text", text(150000));
  console.log("fib", fib(25));
}
