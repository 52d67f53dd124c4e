"""Seed words of the multilingual word bank: a few dozen everyday words per language.

eSpeak NG transcribes them (with its own letter-to-sound rules and dictionaries) into
phoneme strings. The bank learns each language's phonotactics from those strings (and from
eSpeak's spoken numbers 0-100) and generates its pseudo-words from them; the seed words
themselves enter the bank as its real words. The English seeds leave out the 35 Speech
Commands words and the built-in corpus's reserved validation and test words, so a model
meta-trained on the bank has not heard the real corpora's test words as real words.
"""

from __future__ import annotations

__all__ = ["SEED_WORDS"]


def _words(text: str) -> tuple[str, ...]:
    """Whitespace-separated words (``_`` joins the syllables of one Vietnamese word)."""
    return tuple(dict.fromkeys(text.replace("_", " ").split()))


#: language code -> everyday words in the language's own script.
SEED_WORDS: dict[str, tuple[str, ...]] = {
    "en": _words("""
        water coffee bread sugar milk butter rice soup fish car bus train money phone paper
        letter bottle glass knife shirt jacket box clock lamp teacher friend mother father
        baby city forest beach flower grass rain snow wind star morning evening night family
        school office street airport animal sleep walk drink give take bring push pull clean
        wash drive smile think teach travel begin small cold warm soft empty easy tired
    """),
    "de": _words("""
        Wasser Brot Milch Käse Apfel Haus Tür Fenster Tisch Stuhl Küche Garten Hund Katze Vogel
        Pferd Auto Zug Geld Buch Brief Flasche Messer Schuh Schlüssel Uhr Lampe Freund Mutter
        Vater Stadt Fluss Berg Wald Blume Regen Schnee Wind Wolke Sonne Mond Morgen Abend Nacht
        Schule Straße Brücke essen trinken schlafen laufen springen singen tanzen sprechen hören
        kaufen kochen waschen fahren fliegen schwimmen lachen denken rot blau grün gelb
        schwarz weiß klein groß kalt warm schön
    """),
    "fr": _words("""
        eau café pain lait fromage beurre pomme maison porte fenêtre table chaise cuisine jardin
        chien chat oiseau cheval voiture train argent livre lettre bouteille couteau chaussure
        clé horloge ami mère père ville rivière montagne forêt fleur pluie neige vent nuage
        soleil lune matin soir nuit école rue pont manger boire dormir marcher chanter danser
        parler écouter acheter cuisiner laver conduire nager rire penser rouge bleu vert jaune
        noir blanc petit grand froid chaud
    """),
    "es": _words("""
        agua café pan leche queso mantequilla manzana casa puerta ventana mesa silla cocina
        jardín perro gato pájaro caballo coche tren dinero libro carta botella cuchillo zapato
        llave reloj amigo madre padre ciudad río montaña bosque flor lluvia nieve viento nube
        sol luna mañana tarde noche escuela calle puente comer beber dormir caminar cantar
        bailar hablar escuchar comprar cocinar lavar conducir nadar reír pensar rojo azul verde
        amarillo negro blanco pequeño grande frío caliente
    """),
    "it": _words("""
        acqua caffè pane latte formaggio burro mela casa porta finestra tavolo sedia cucina
        giardino cane gatto uccello cavallo macchina treno soldi libro lettera bottiglia
        coltello scarpa chiave orologio amico madre padre città fiume montagna bosco fiore
        pioggia neve vento nuvola sole luna mattina sera notte scuola strada ponte mangiare bere
        dormire camminare cantare ballare parlare ascoltare comprare cucinare lavare guidare
        nuotare ridere pensare rosso blu verde giallo nero bianco piccolo grande freddo caldo
    """),
    "pt": _words("""
        água café pão leite queijo manteiga maçã casa porta janela mesa cadeira cozinha jardim
        cão gato pássaro cavalo carro comboio dinheiro livro carta garrafa faca sapato chave
        relógio amigo mãe pai cidade rio montanha floresta flor chuva neve vento nuvem sol lua
        manhã tarde noite escola rua ponte comer beber dormir andar cantar dançar falar ouvir
        comprar cozinhar lavar conduzir nadar rir pensar vermelho azul verde amarelo preto
        branco pequeno grande frio quente
    """),
    "nl": _words("""
        water koffie brood melk kaas boter appel huis deur raam tafel stoel keuken tuin hond kat
        vogel paard auto trein geld boek brief fles mes schoen sleutel klok lamp vriend moeder
        vader stad rivier berg bos bloem regen sneeuw wind wolk zon maan ochtend avond nacht
        school straat brug eten drinken slapen lopen springen zingen dansen spreken luisteren
        kopen koken wassen rijden vliegen zwemmen lachen denken rood blauw groen geel zwart wit
        klein groot koud warm
    """),
    "pl": _words("""
        woda kawa chleb mleko ser masło jabłko dom drzwi okno stół krzesło kuchnia ogród pies
        kot ptak koń samochód pociąg pieniądze książka list butelka nóż but klucz zegar
        przyjaciel matka ojciec miasto rzeka góra las kwiat deszcz śnieg wiatr chmura słońce
        księżyc rano wieczór noc szkoła ulica most jeść pić spać chodzić śpiewać tańczyć mówić
        słuchać kupować gotować prać jechać pływać śmiać myśleć czerwony niebieski zielony
        żółty czarny biały mały duży zimny ciepły
    """),
    "ru": _words("""
        вода кофе хлеб молоко сыр масло яблоко дом дверь окно стол стул кухня сад собака кошка
        птица лошадь машина поезд деньги книга письмо бутылка нож ботинок ключ часы друг мать
        отец город река гора лес цветок дождь снег ветер облако солнце луна утро вечер ночь
        школа улица мост есть пить спать ходить петь танцевать говорить слушать покупать
        готовить мыть ехать плавать смеяться думать красный синий зелёный жёлтый чёрный белый
        маленький большой холодный тёплый
    """),
    "hi": _words("""
        पानी चाय रोटी दूध चावल घर दरवाज़ा खिड़की मेज़ कुर्सी रसोई बगीचा कुत्ता बिल्ली चिड़िया
        घोड़ा गाड़ी पैसा किताब चिट्ठी बोतल चाकू जूता चाबी घड़ी दोस्त माँ पिता शहर नदी पहाड़
        जंगल फूल बारिश हवा बादल सूरज चाँद सुबह शाम रात स्कूल सड़क पुल खाना पीना सोना चलना
        गाना नाचना बोलना सुनना खरीदना पकाना धोना तैरना हँसना सोचना लाल नीला हरा पीला काला
        सफ़ेद छोटा बड़ा ठंडा गरम
    """),
    "tr": _words("""
        su kahve ekmek süt peynir tereyağı elma ev kapı pencere masa sandalye mutfak bahçe köpek
        kedi kuş at araba tren para kitap mektup şişe bıçak ayakkabı anahtar saat arkadaş anne
        baba şehir nehir dağ orman çiçek yağmur kar rüzgar bulut güneş ay sabah akşam gece okul
        sokak köprü yemek içmek uyumak yürümek şarkı dans konuşmak dinlemek almak pişirmek
        yıkamak sürmek yüzmek gülmek düşünmek kırmızı mavi yeşil sarı siyah beyaz küçük büyük
        soğuk sıcak
    """),
    "sw": _words("""
        maji kahawa mkate maziwa jibini siagi tufaha nyumba mlango dirisha meza kiti jiko bustani
        mbwa paka ndege farasi gari treni pesa kitabu barua chupa kisu kiatu ufunguo saa rafiki
        mama baba mji mto mlima msitu ua mvua theluji upepo wingu jua mwezi asubuhi jioni usiku
        shule barabara daraja kula kunywa kulala kutembea kuimba kucheza kusema kusikiliza
        kununua kupika kuosha kuendesha kuogelea kucheka kufikiri nyekundu bluu kijani njano
        nyeusi nyeupe ndogo kubwa baridi joto
    """),
    "vi": _words("""
        nước cà_phê bánh_mì sữa phô_mai bơ táo nhà cửa cửa_sổ bàn ghế bếp vườn chó mèo chim ngựa
        xe tàu tiền sách thư chai dao giày chìa_khóa đồng_hồ bạn mẹ cha thành_phố sông núi rừng
        hoa mưa tuyết gió mây mặt_trời trăng sáng tối đêm trường đường cầu ăn uống ngủ đi hát
        nhảy nói nghe mua nấu giặt lái bơi cười nghĩ đỏ xanh vàng đen trắng nhỏ lớn lạnh nóng
    """),
    "cmn": _words("""
        水 咖啡 面包 牛奶 奶酪 苹果 房子 门 窗户 桌子 椅子 厨房 花园 狗 猫 鸟 马 汽车 火车 钱 书
        信 瓶子 刀 鞋 钥匙 钟 朋友 母亲 父亲 城市 河 山 森林 花 雨 雪 风 云 太阳 月亮 早上
        晚上 夜 学校 街 桥 吃 喝 睡觉 走 跳 唱歌 跳舞 说话 听 买 做饭 洗 开车 飞 游泳 笑 想
        红 蓝 绿 黄 黑 白 小 大 冷 热
    """),
}
